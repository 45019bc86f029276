"""Without an explicit generator, the DP noise functions draw from OS randomness, not from torch's global RNG.

Noise that `torch.manual_seed(<the run's seed>)` regenerates can be subtracted by anyone who knows the seed (it is in
the configuration), which leaves no privacy.
"""

import torch

from hf_ext.federated import add_server_noise
from hf_ext.federated.aggregation import aggregate_round
from hf_ext.federated.privacy import noisy_sum


def _twice(fn):
    torch.manual_seed(0)
    a = fn()
    torch.manual_seed(0)
    b = fn()
    return a, b


def test_server_noise_is_not_replayed_by_the_global_seed():
    zero = {"w": torch.zeros(64, dtype=torch.float64)}
    (a, std), (b, _) = _twice(lambda: add_server_noise(zero, 1.0, 1.0, 4))
    assert std == 0.25
    assert not torch.equal(a["w"], b["w"])
    assert 0.1 < float(a["w"].std()) < 0.5  # still the calibrated noise


def test_aggregate_round_noise_is_not_replayed_by_the_global_seed():
    glob = {"w": torch.zeros(64)}
    clients = [{"w": torch.ones(64) * 0.01}, {"w": -torch.ones(64) * 0.01}]
    a, b = _twice(lambda: aggregate_round(glob, clients, [1, 1], "full", None, 1.0, 1.0))
    assert not torch.equal(a["w"], b["w"])


def test_dp_sgd_noisy_sum_is_not_replayed_by_the_global_seed():
    grads = {"w": torch.zeros(3, 64)}
    a, b = _twice(lambda: noisy_sum(grads, 1.0, 1.0))
    assert not torch.equal(a["w"], b["w"])
    assert 0.6 < float(a["w"].std()) < 1.5
    # an explicit generator still makes it reproducible
    c = noisy_sum(grads, 1.0, 1.0, torch.Generator().manual_seed(3))
    d = noisy_sum(grads, 1.0, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(c["w"], d["w"])
