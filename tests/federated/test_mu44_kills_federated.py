"""Mutation pass mu44: tests that kill surviving mutants of the pass-37 federated clip-norm / noise checks."""

import numpy as np
import pytest
import torch

from hf_ext.federated import noisy_sum
from hf_ext.federated.privacy import PrivacyAccountant


@pytest.mark.parametrize("sigma", [torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64), np.float32(0.5)])
def test_noisy_sum_and_the_accountant_take_a_0d_tensor_noise_multiplier(sigma):
    # `_check_sigma` reads numpy numbers and 0-d tensors as Python floats, as the clip norms are read
    clipped = {"w": torch.arange(12.0).view(3, 4)}
    a = noisy_sum(clipped, 1.5, sigma, torch.Generator().manual_seed(0))
    b = noisy_sum(clipped, 1.5, 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a["w"], b["w"], rtol=0, atol=0)
    accountant = PrivacyAccountant()
    accountant.step(0.01, sigma, 3)
    assert accountant.history == [(0.01, 0.5, 3)]


def test_noisy_sum_without_noise_does_not_read_the_bound():
    # with noise_multiplier 0 nothing is scaled by max_norm: the plain sum, whatever the (unused) bound
    clipped = {"w": torch.arange(12.0).view(3, 4)}
    for bound in (None, 1.5):
        out = noisy_sum(clipped, bound, 0.0)
        torch.testing.assert_close(out["w"], clipped["w"].sum(0), rtol=0, atol=0)
