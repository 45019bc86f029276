"""lf43: transposed convolutions (`nn.ConvTranspose1d/2d/3d`) store their weight as `(in, out / groups, *kernel)`, so
an output neuron (channel) is `weight[:, j]`, not a row. `rotational_param_groups` gave them `neuron_dim=0`, so LionAR
and RotationalWrapper kept the norm of every *input* slice and let the output channels' norms drift (0.65% in 20
LionAR steps of a ConvTranspose2d(4, 6, 3)), and `neuron_dim=1` was refused for tensors of more than 2 dims. Now
their weights get `neuron_dim=1`, which for a 3+-dim tensor means dim 1 is the neuron axis."""

import pytest
import torch
from torch import nn

from hf_ext.optim import LionAR, RotationalWrapper, angular_update, rotational_param_groups


def _layouts(model):
    return {id(p): g["neuron_dim"] for g in rotational_param_groups(model, 0.1) for p in g["params"]}


def test_transposed_convolutions_get_output_channel_neurons():
    model = nn.Sequential(
        nn.ConvTranspose1d(3, 5, 3), nn.ConvTranspose2d(5, 4, 3), nn.ConvTranspose3d(4, 2, 2), nn.Conv2d(2, 3, 3)
    )
    layouts = _layouts(model)
    assert [layouts[id(model[i].weight)] for i in range(4)] == [1, 1, 1, 0]


def _make(cls, params, **kw):
    options = dict(lr=1e-2, weight_decay=0.1, **kw)
    return cls(params, **options) if cls is LionAR else cls(params, inner="adamw", **options)


@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
@pytest.mark.parametrize("options", [{}, {"update_norm_decay": 0.9}, {"zero_mean": False}])
def test_a_transposed_weight_rotates_as_its_output_major_copy(cls, options):
    """`(in, out, k, k)` with `neuron_dim=1` steps exactly as the `(out, in, k, k)` copy with rows as neurons."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 6, 3, 3))
    v = nn.Parameter(w.detach().transpose(0, 1).contiguous())
    opt_w = _make(cls, [{"params": [w], "neuron_dim": 1}], **options)
    opt_v = _make(cls, [{"params": [v], "neuron_dim": 0}], **options)
    for _ in range(5):
        g = torch.randn(4, 6, 3, 3)
        w.grad, v.grad = g.clone(), g.transpose(0, 1).contiguous()
        opt_w.step()
        opt_v.step()
    torch.testing.assert_close(w.detach().transpose(0, 1), v.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
def test_output_channel_norms_of_a_conv_transpose_stay_fixed(cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3), nn.GroupNorm(6, 6, affine=False))
    weight = model[0].weight
    opt = _make(cls, model, zero_mean=False)
    before = weight.detach().transpose(0, 1).reshape(6, -1).norm(dim=1)
    x = torch.randn(8, 4, 5, 5)
    for _ in range(10):
        old = weight.detach().clone()
        opt.zero_grad()
        (model(x) * torch.randn(8, 6, 7, 7)).sum().backward()
        opt.step()
        angles = angular_update(old, weight.detach(), neuron_dim=1)
        assert angles.shape == (6,) and bool((angles > 0).all())
    after = weight.detach().transpose(0, 1).reshape(6, -1).norm(dim=1)
    torch.testing.assert_close(after, before, rtol=1e-6, atol=0)


def test_angular_update_of_a_transposed_weight_is_per_output_channel():
    old, new = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(
        angular_update(old, new, 1), angular_update(old.transpose(0, 1), new.transpose(0, 1), 0)
    )
