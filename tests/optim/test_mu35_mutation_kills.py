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


def test_a_zero_neuron_of_a_sharded_weight_has_no_angle(tmp_path):
    """The DTensor branch (per-neuron sums gathered in one collective) gives NaN for a zero neuron too, as the dense
    branch does; here a one-process gloo group with the weight sharded over its single rank."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        old = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
        new = torch.tensor([[0.1, 0.0], [1.0, 1.0], [2.0, 1.0]], dtype=torch.float64)
        dense = angular_update(old, new)
        sharded = angular_update(distribute_tensor(old, mesh, [Shard(0)]), distribute_tensor(new, mesh, [Shard(0)]))
        assert math.isnan(float(sharded[0])) and math.isnan(float(dense[0]))
        assert torch.allclose(sharded[1:], dense[1:]) and abs(float(dense[1]) - math.pi / 4) < 1e-12
    finally:
        if own:
            dist.destroy_process_group()
