"""Mutation run 17: a neuron whose update direction is tiny still rotates by the full angle.

The rotational step moves each neuron by the target angle in the plane of `w` and the orthogonal part `u_perp` of
the inner optimizer's direction: the angle does not depend on `||u||`. A neuron counts as "not moving" only when
`u_perp` vanishes relative to `||u||` (u parallel to w, or u = 0); an absolute threshold froze every neuron of a
layer whose gradients are small (SGD with momentum, or AdamW with a large `eps`, gives a direction as small as
the gradient).
"""

import pytest
import torch

from hf_ext.optim import RotationalWrapper


def _rotate_once(inner, grad_scale, **inner_kwargs):
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 8, generator=gen))
    grad = torch.randn(4, 8, generator=gen)
    opt = RotationalWrapper(
        [{"params": [w], "rotational": True, "neuron_dim": 0}], inner=inner, lr=0.1, angle=0.1,
        update_norm_decay=0.0, **inner_kwargs,
    )  # fmt: skip
    w0 = w.detach().clone()
    centred = w0 - w0.mean(1, keepdim=True)  # the wrapper centres each neuron at its first step, keeping its norm
    before = centred * (w0.norm(dim=1, keepdim=True) / centred.norm(dim=1, keepdim=True))
    w.grad = grad_scale * grad
    opt.step()
    return before, w.detach().clone()


def _angles(a, b):
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
    return torch.arccos(cos.clamp(-1, 1))


@pytest.mark.parametrize(("inner", "kwargs"), [("sgdm", {}), ("adamw", {"eps": 1.0})])
def test_small_gradients_rotate_every_neuron_by_the_target_angle(inner, kwargs):
    before, big = _rotate_once(inner, 1.0, **kwargs)
    _, small = _rotate_once(inner, 1e-7, **kwargs)
    ang = _angles(before, small)
    torch.testing.assert_close(ang, torch.full_like(ang, 0.1), atol=1e-5, rtol=0)
    torch.testing.assert_close(small.norm(dim=1), before.norm(dim=1), atol=1e-5, rtol=1e-5)
    if inner == "sgdm":  # the direction is the gradient's: the step does not depend on its scale at all
        torch.testing.assert_close(small, big, atol=1e-5, rtol=1e-5)
