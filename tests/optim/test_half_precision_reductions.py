"""float16 weights with more than 65504 elements in one norm group (the whole tensor for LionA or `per_neuron=False`,
one neuron otherwise): the sign count and the per-neuron sums were taken in float16, overflowed to inf, and the step
vanished silently (LionA: step scale sqrt(n / inf) = 0; LionAR / RotationalWrapper: ||u||^2 = inf, no rotation).
They are now accumulated in float32; the expected values come from float64 recomputations."""

import pytest
import torch
from torch import nn

from hf_ext.optim import LionA, LionAR, RotationalWrapper


def _step(make, p0, g):
    p = nn.Parameter(p0.clone())
    opt = make(p)
    p.grad = g.clone()
    opt.step()
    return p.detach()


@pytest.mark.parametrize("shape", [(256, 256), (512, 512)])
def test_liona_float16_step_has_the_documented_norm_beyond_65504_elements(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0)).half()
    p1 = _step(lambda p: LionA([p], lr=1.0), torch.zeros(shape, dtype=torch.float16), g)
    # first Lion step from zero momentum: u = sign(g); ||u||^2 = n exactly, so the step is -sign(g) (was 0)
    torch.testing.assert_close(p1, -torch.sign(g), rtol=0, atol=0)


def _angle(p0: torch.Tensor, p1: torch.Tensor) -> float:
    a = p0.double().flatten()
    a = a - a.mean()  # zero_mean centres the weight at its first step
    b = p1.double().flatten()
    return float(torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1)))


MAKERS = {
    "LionAR": lambda per_neuron: lambda p: LionAR([p], lr=1e-3, angle=0.05, per_neuron=per_neuron),
    "RotationalWrapper-adamw": lambda per_neuron: (
        lambda p: RotationalWrapper([p], lr=1e-3, angle=0.05, per_neuron=per_neuron, update_norm_decay=0.0)
    ),
    "RotationalWrapper-lion": lambda per_neuron: (
        lambda p: RotationalWrapper(
            [p], inner="lion", lr=1e-3, angle=0.05, per_neuron=per_neuron, update_norm_decay=0.0
        )
    ),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("per_neuron, shape", [(False, (512, 512)), (True, (2, 70000))])
def test_rotational_float16_step_turns_by_the_angle_beyond_65504_elements_per_neuron(name, per_neuron, shape):
    gen = torch.Generator().manual_seed(1)
    p0 = (torch.randn(shape, generator=gen) * 0.02).half()
    g = torch.randn(shape, generator=gen).half()
    p1 = _step(MAKERS[name](per_neuron), p0, g)
    if per_neuron:
        angles = [_angle(p0[i], p1[i]) for i in range(shape[0])]
    else:
        angles = [_angle(p0, p1)]
    for angle in angles:  # was 0.0002 (float16 rounding only): no rotation
        assert angle == pytest.approx(0.05, abs=5e-4)
    # and the float16 step is the float32 one, rounded
    p32 = _step(MAKERS[name](per_neuron), p0.float(), g.float())
    torch.testing.assert_close(p1.float(), p32, rtol=2e-3, atol=2e-5)


def test_a_float16_update_norm_ema_that_would_overflow_is_refused_not_silently_frozen():
    """With update_norm_decay > 0 the EMA of a neuron's ||u||^2 (about its entry count under a sign update) is kept
    in the weight's dtype: past 65504 it was stored as inf and every later angle was 0 (from step ~29 at decay 0.9)."""
    gen = torch.Generator().manual_seed(5)
    p = nn.Parameter((torch.randn(2, 70000, generator=gen) * 0.02).half())
    opt = LionAR([p], lr=1e-3, angle=0.05, update_norm_decay=0.9)
    with pytest.raises(ValueError, match="update_norm_decay > 0 on float16 weights"):
        for _ in range(40):
            p.grad = torch.randn(p.shape, generator=gen).half()
            opt.step()
    small = nn.Parameter((torch.randn(4, 64, generator=gen) * 0.02).half())  # far from the range: unaffected
    opt = LionAR([small], lr=1e-3, angle=0.05, update_norm_decay=0.9)
    for _ in range(5):
        small.grad = torch.randn(small.shape, generator=gen).half()
        opt.step()
