"""Audit hi16: input and API edges of the influence estimator.

1. A list-of-dicts dataset was batched with the columns of each chunk's first example: a causal-LM example without
   `labels` first in a chunk had `labels` rebuilt from `input_ids` for the whole chunk (the -100 prompt masks of the
   others ignored, so scores depended on `batch_size`); the other order failed with a bare `KeyError: 'labels'`.
2. With several active adapters only the first was tracked, without a word.
3. `exact_gfim_hvp` / `exact_fim_hvp` accepted a negative damping, a NaN `v` and a `v` of the wrong shape.
"""

import math

import pytest
import torch

from hf_ext.hyperinf import exact_fim_hvp, exact_gfim_hvp, fim, gfim

# 3. ------------------------------------------------------------------------------------------------------------------


def _dense_problem():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(50, 2, 3, generator=gen, dtype=torch.float64) + 2.0
    v = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    return g, v


@pytest.mark.parametrize("solver", ["gfim", "fim"])
@pytest.mark.parametrize("damping", [-0.3, 0.0, math.nan, math.inf])
def test_exact_solvers_refuse_a_damping_that_is_not_finite_and_positive(solver, damping):
    g, v = _dense_problem()
    fn, matrix = (exact_gfim_hvp, gfim(g)) if solver == "gfim" else (exact_fim_hvp, fim(g))
    with pytest.raises(ValueError, match=r"`damping` must be a finite positive number"):
        fn(v, matrix, damping)


@pytest.mark.parametrize("solver", ["gfim", "fim"])
def test_exact_solvers_refuse_a_v_that_is_not_finite_or_not_2d(solver):
    g, v = _dense_problem()
    fn, matrix = (exact_gfim_hvp, gfim(g)) if solver == "gfim" else (exact_fim_hvp, fim(g))
    bad = v.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"`v` holds NaN or inf"):
        fn(bad, matrix, 0.1)
    for shaped in (v.reshape(-1), v.reshape(1, 2, 3)):
        with pytest.raises(ValueError, match=r"`v` must be a non-empty rank-first `\(r, d\)` matrix"):
            fn(shaped, matrix, 0.1)
    with pytest.raises(TypeError, match=r"`v` must be a floating-point tensor"):
        fn(v.long(), matrix, 0.1)


def test_exact_solvers_refuse_a_curvature_of_the_wrong_size_or_not_finite():
    g, v = _dense_problem()
    with pytest.raises(ValueError, match=r"`gfim_matrix` must be d x d with d = v.shape\[-1\], i.e. \(2, 2\) for `v` "
                                         r"of shape \(3, 2\), got \(3, 3\) \(is `v` transposed"):  # fmt: skip
        exact_gfim_hvp(v.T.contiguous(), gfim(g), 0.1)
    with pytest.raises(ValueError, match=r"`fim_matrix` must be r d x r d, i.e. \(6, 6\).*got \(3, 3\)"):
        exact_fim_hvp(v, gfim(g), 0.1)
    with pytest.raises(ValueError, match=r"`gfim_matrix` must be a non-empty square matrix"):
        exact_gfim_hvp(v, g[0], 0.1)
    broken = gfim(g)
    broken[0, 1] = math.inf
    with pytest.raises(ValueError, match=r"`gfim_matrix` holds NaN or inf"):
        exact_gfim_hvp(v, broken, 0.1)


def test_exact_solvers_still_solve_valid_input():
    g, v = _dense_problem()
    lam = torch.tensor(0.1, dtype=torch.float64)  # a 0-dim tensor damping is accepted, as in datainf_hvp
    expected = torch.linalg.solve(fim(g) + 0.1 * torch.eye(6, dtype=torch.float64), v.reshape(-1)).reshape(2, 3)
    torch.testing.assert_close(exact_fim_hvp(v, fim(g), lam), expected)
    right = torch.linalg.solve(gfim(g) + 0.1 * torch.eye(3, dtype=torch.float64), v.T).T
    torch.testing.assert_close(exact_gfim_hvp(v, gfim(g), lam), right)
