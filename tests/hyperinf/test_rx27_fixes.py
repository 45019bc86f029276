"""rx27 F2: a finite float32 GFIM past float16's range inverted with `schulz_dtype=torch.float16` was refused by
`schulz_inverse` as "`matrix` holds NaN or inf ... accumulate the GFIM in float32 or float64" (it was already float32,
and the message named neither the layer nor `schulz_dtype`). The engine now names both."""

import pytest
import torch

from hf_ext.hyperinf import influence_from_gradients


def test_a_curvature_past_the_schulz_dtype_range_names_schulz_dtype():
    gen = torch.Generator().manual_seed(0)
    train = {"l": 200 * torch.randn(50, 4, 8, generator=gen)}  # GFIM diagonal ~1.6e5 > 65504
    val = {"l": torch.randn(3, 4, 8, generator=gen)}
    with pytest.raises(
        ValueError, match=r"layer 'l' .* overflows schulz_dtype=torch.float16.*schulz_dtype=torch.float64"
    ):
        influence_from_gradients(train, val, "hyperinf", schulz_dtype=torch.float16)
    small = {"l": train["l"] / 100}  # within float16's range: still inverted in float16
    assert bool(torch.isfinite(influence_from_gradients(small, val, "hyperinf", schulz_dtype=torch.float16)).all())
