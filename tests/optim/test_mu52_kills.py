"""Mutation pass mu52: tests that kill surviving mutants of hf_ext.optim (normalized.py SNR factor, metrics.py)."""

import math

import pytest
import torch

from hf_ext.optim import LionA, gradient_momentum_cosine


@pytest.mark.parametrize("b2", [0.95, 0.999])
def test_snr_correction_leaves_the_first_step_unscaled_when_c_rounds_below_one(b2):
    # c_1 = (1 - b) / (1 + b) * (1 - b^2) / (1 - b)^2 is 1 in exact arithmetic; in float64 it rounds to 1 - 6e-16
    # (b = 0.95) or 1 - 1.5e-14 (b = 0.999). One gradient says nothing about the noise: the factor must be 1 and
    # the recorded SNR 0 (a test `1 - c <= 0` divided rounding by rounding and scaled the first step arbitrarily)
    torch.manual_seed(0)
    w0 = torch.randn(8, 5, dtype=torch.float64)
    grad = torch.randn(8, 5, dtype=torch.float64)
    steps = []
    for snr in (False, True):
        w = torch.nn.Parameter(w0.clone())
        opt = LionA([w], lr=0.1, betas=(0.9, b2), snr_correction=snr)
        w.grad = grad.clone()
        opt.step()
        steps.append(w.detach() - w0)
        if snr:
            assert opt.state[w]["snr"] == 0.0
    torch.testing.assert_close(steps[1], steps[0], rtol=0, atol=0)


def test_gradient_momentum_cosine_is_scale_invariant_for_small_gradients():
    # a cosine does not depend on the scale of either vector: gradients and momenta of norm ~1e-4 (a model near its
    # minimum) give the cosine of the same directions at unit scale, against a float64 reference
    torch.manual_seed(0)
    g = [torch.randn(6, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    m = [0.5 * g[0] + torch.randn(6, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    gv = torch.cat([t.flatten() for t in g])
    mv = torch.cat([t.flatten() for t in m])
    want = float(gv @ mv / (gv.norm() * mv.norm()))
    assert gradient_momentum_cosine(g, m) == pytest.approx(want, rel=1e-12)
    for scale in (1e-4, 1e-6):
        small = gradient_momentum_cosine([scale * t for t in g], [scale * t for t in m])
        assert small == pytest.approx(want, rel=1e-12)
        assert math.isfinite(small)
