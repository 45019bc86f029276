"""Mutation run 16: the monitor's FP8 underflow is what torch's own E4M3 cast flushes to zero.

The smallest E4M3 subnormal is 2**-9; a scaled value rounds to zero at or below half of it (2**-10, a tie rounds to
the even zero) and to 2**-9 just above. A threshold of 2**-9 (or a strict `<`) counts values in (2**-10, 2**-9] (or
exactly 2**-10) wrongly; the expected fractions here come from `torch.float8_e4m3fn` casts, not from the threshold.
"""

import pytest
import torch
from torch import nn

from hf_ext.fp8 import KurtosisMonitor

_TINY = 2.0**-10


def _underflow(x: torch.Tensor) -> float:
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Identity()])
    monitor = KurtosisMonitor(model, sites=["activation"])
    with monitor.active():
        for layer in model.layers:
            layer(x)
    return monitor.collect()["activation/underflow/avg"]


def _torch_flushed_fraction(x: torch.Tensor) -> float:
    """Fraction of the non-zero elements that the per-tensor scaled cast to float8_e4m3fn turns into zeros."""
    absx = x.abs().float()
    scale = 448.0 / absx.amax()
    nonzero = absx > 0
    flushed = nonzero & ((absx * scale).to(torch.float8_e4m3fn).float() == 0)
    return float(flushed.sum()) / float(nonzero.sum())


def test_underflow_boundary_at_unit_scale():
    """amax 448 -> scale 1: 2**-11 and 2**-10 (a tie) flush to zero; 1.01 * 2**-10, 0.0015 and 2**-9 do not."""
    values = [448.0, 0.0, 2.0**-11, _TINY, 1.01 * _TINY, 0.0015, -0.0015, 2.0**-9]
    x = torch.tensor([values])
    cast = torch.tensor(values[2:]).to(torch.float8_e4m3fn).float().tolist()
    assert cast == [0.0, 0.0, 2.0**-9, 2.0**-9, -(2.0**-9), 2.0**-9]  # torch's rounding, which the monitor models
    assert _underflow(x) == pytest.approx(2 / 7)  # of the 7 non-zero elements
    assert _underflow(x) == pytest.approx(_torch_flushed_fraction(x))


def test_values_just_above_the_flush_threshold_are_not_underflow():
    """Every value in (2**-10, 2**-9] survives the cast: no underflow at all."""
    x = torch.tensor([[448.0, 1.05 * _TINY, 1.5 * _TINY, 0.0015, 1.9 * _TINY, 2.0**-9]])
    assert _torch_flushed_fraction(x) == 0.0
    assert _underflow(x) == 0.0


@pytest.mark.parametrize("amax", [448.0, 4.0, 3.0, 1e4])
def test_underflow_matches_the_e4m3_cast(amax):
    scale = 448.0 / amax
    factors = [0.25, 0.5, 0.9, 0.99, 1.0, 1.01, 1.1, 1.5, 1.9, 2.0, 3.0]
    values = [amax, 0.0] + [f * _TINY / scale for f in factors] + [-f * _TINY / scale for f in factors]
    x = torch.tensor([values], dtype=torch.float32)
    expected = _torch_flushed_fraction(x)
    assert 0.2 < expected < 0.5  # both sides of the boundary are represented
    assert _underflow(x) == pytest.approx(expected)
