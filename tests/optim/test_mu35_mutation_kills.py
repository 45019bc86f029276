"""mu35 mutation run: pins for the cj35 update-metric changes."""

import math

import torch

from hf_ext.optim import angular_update, relative_representation_change


def test_an_unchanged_neuron_has_angle_zero_not_nan():
    """cos = dot / (|a| |b|) rounds above 1 for many rows of a == b; the clamp keeps arccos at 0 there."""
    a = torch.randn(64, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    angles = angular_update(a, a.clone())
    assert not angles.isnan().any() and angles.abs().max() < 1e-6
    assert angular_update(a.T, a.T.clone(), neuron_dim=1).abs().max() < 1e-6


def test_relative_representation_change_of_small_representations_is_the_plain_ratio():
    """||X (W1 - W0)^T|| / ||X W0^T|| (float64), also when ||X W0^T|| is far below 1."""
    g = torch.Generator().manual_seed(1)
    x = 1e-4 * torch.randn(5, 3, dtype=torch.float64, generator=g)
    w0 = torch.randn(4, 3, dtype=torch.float64, generator=g)
    w1 = w0 + 0.1 * torch.randn(4, 3, dtype=torch.float64, generator=g)
    expected = torch.linalg.norm(x @ (w1 - w0).T) / torch.linalg.norm(x @ w0.T)
    assert math.isclose(relative_representation_change(x, w0, w1), float(expected), rel_tol=1e-12)
