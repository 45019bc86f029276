"""Mutation run 47: kills for the federated mutants queued in pass 38 that survived the existing tests.

- Goldfish drops a target when its table value is strictly below `1 / k` (the documented rule); a table entry equal
  to `1 / k` must be kept (`<=` would drop it). The table holds exact multiples of 2**-24, so a few entries equal
  `1 / k` for a power of two `k`; with `context_width=1` a target's key is its own id, so the test can hit one.
- `PrivacyAccountant.get_epsilon` is infinite as soon as any recorded step had no noise, not only when all had.
"""

import math

import torch

from hf_ext.federated import goldfish_drop_mask
from hf_ext.federated.goldfish import goldfish_table
from hf_ext.federated.privacy import PrivacyAccountant


def test_a_table_value_equal_to_one_over_k_is_not_dropped():
    table = goldfish_table()
    for k in (2, 4, 8, 16, 32, 64):
        equal = (table == 1.0 / k).nonzero().flatten()
        if equal.numel():
            break
    assert equal.numel(), "no table entry equals 1/k for a power of two k <= 64"
    key = int(equal[0])
    below = int((table < 1.0 / k).nonzero().flatten()[0])
    targets = torch.tensor([[key, below]])
    mask = goldfish_drop_mask(targets, k, context_width=1)
    assert mask.tolist() == [[False, True]]


def test_one_step_without_noise_makes_epsilon_infinite_among_noisy_steps():
    acc = PrivacyAccountant()
    acc.step(0.01, 1.0, 10)
    finite = acc.get_epsilon(1e-5)
    assert math.isfinite(finite) and finite > 0
    acc.step(0.01, 0.0, 1)  # one round trained without noise
    acc.step(0.01, 1.0, 10)
    assert math.isinf(acc.get_epsilon(1e-5))


def test_poisson_sample_rate_is_capped_at_one_for_a_dataset_smaller_than_the_batch():
    from hf_ext.federated.privacy import poisson_sample_rate

    assert poisson_sample_rate(8, 100) == 0.08
    assert poisson_sample_rate(64, 10) == 1.0  # every example in every batch, not a rate of 6.4
    assert poisson_sample_rate(10, 10) == 1.0
