"""lf43: the federated clip norms (`clip_update`, `client_update`'s `clip_norm`, `aggregate_round`'s
`client_clip_norm`, `clip_per_sample`, `noisy_sum` / `dp_gradient`'s `max_norm`, `add_server_noise`'s `clip_norm`)
take a 0-d tensor as `torch.nn.utils.clip_grad_norm_` does, and refuse the same bad values by name everywhere.

Before: `clip_update`, `clip_per_sample` and `noisy_sum` refused `torch.tensor(1.0)`; `aggregate_round` let it through
its own check and had it refused as `max_norm` by `clip_update`; `add_server_noise` took it and returned the noise std as
a tensor (documented as a float), and took `True` as a clip norm of 1."""

import math

import pytest
import torch

from hf_ext.federated import add_server_noise, aggregate_round, clip_per_sample, clip_update, noisy_sum
from hf_ext.federated.aggregation import client_update


def test_clip_update_and_client_update_take_a_0d_tensor_bound():
    update = {"w": torch.full((4,), 3.0)}
    assert float(clip_update(update, torch.tensor(1.0))["w"].norm()) == pytest.approx(1.0)
    out = client_update({"w": torch.zeros(4)}, update, "full", clip_norm=torch.tensor(2.0))
    torch.testing.assert_close(out["w"], clip_update(update, 2.0)["w"].double())


def test_clip_per_sample_and_noisy_sum_take_a_0d_tensor_bound():
    grads = {"w": torch.arange(12.0).view(3, 4)}
    clipped, norms = clip_per_sample(grads, torch.tensor(1.5))
    reference, _ = clip_per_sample(grads, 1.5)
    torch.testing.assert_close(clipped["w"], reference["w"], rtol=0, atol=0)
    a = noisy_sum(clipped, torch.tensor(1.5), 0.5, torch.Generator().manual_seed(0))
    b = noisy_sum(clipped, 1.5, 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a["w"], b["w"], rtol=0, atol=0)


def test_aggregate_round_takes_a_0d_tensor_client_clip_norm():
    global_state = {"w": torch.zeros(4)}
    clients = [{"w": torch.full((4,), 3.0)}, {"w": torch.full((4,), -1.0)}]
    a = aggregate_round(global_state, clients, [1, 1], "full", client_clip_norm=torch.tensor(1.0))
    b = aggregate_round(global_state, clients, [1, 1], "full", client_clip_norm=1.0)
    torch.testing.assert_close(a["w"], b["w"], rtol=0, atol=0)


def test_add_server_noise_std_is_a_float_for_a_0d_tensor_bound():
    zero = {"w": torch.zeros(3, dtype=torch.float64)}
    a, std = add_server_noise(zero, torch.tensor(1.0), torch.tensor(2.0), 4, torch.Generator().manual_seed(0))
    b, ref = add_server_noise(zero, 1.0, 2.0, 4, torch.Generator().manual_seed(0))
    assert type(std) is float and std == ref == 0.5
    torch.testing.assert_close(a["w"], b["w"], rtol=0, atol=0)


BAD = [True, 0, -1.0, math.inf, math.nan, torch.tensor(0.0), torch.tensor(math.nan), torch.tensor([1.0]), "1"]


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize(
    "name, call",
    [
        ("max_norm", lambda c: clip_update({"w": torch.ones(2)}, c)),
        ("max_norm", lambda c: clip_per_sample({"w": torch.ones(2, 2)}, c)),
        ("max_norm", lambda c: noisy_sum({"w": torch.ones(2, 2)}, c, 1.0, torch.Generator())),
        ("clip_norm", lambda c: client_update({"w": torch.zeros(2)}, {"w": torch.ones(2)}, "full", clip_norm=c)),
        ("clip_norm", lambda c: add_server_noise({"w": torch.zeros(2)}, c, 1.0, 2, torch.Generator())),
        (
            "client_clip_norm",
            lambda c: aggregate_round({"w": torch.zeros(2)}, [{"w": torch.ones(2)}], [1], "full", client_clip_norm=c),
        ),
    ],
)
def test_bad_clip_norms_are_refused_by_name_everywhere(name, call, bad):
    with pytest.raises(ValueError, match=rf"`{name}`.* must be a finite number > 0"):
        call(bad)
