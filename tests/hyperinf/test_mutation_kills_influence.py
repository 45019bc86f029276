"""Second mutation round of `hf_ext.hyperinf`: Schulz's stopping rules and diagnostics, the engine's input guards and
the ranking helpers' rounding, each checked against a closed form or a brute-force count written out here."""

import math

import numpy as np
import pytest
import torch

from hf_ext.hyperinf import (
    InfluenceConfig,
    InfluenceEngine,
    SchulzDivergenceError,
    recall_at_fraction,
    schulz_inverse,
    select_lowest_influence,
)
from hf_ext.hyperinf.influence import _tensor_source
from hf_ext.hyperinf.linalg import schulz_initial_alpha


def _spd(d: int, eigenvalues, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T


# ----------------------------------------------------------------------------------------------------------- Schulz
def test_transpose_start_scale_multiplies_the_one_norm_and_the_infinity_norm():
    """`init="transpose"` is documented as `alpha = 1 / (||A||_1 ||A||_inf)` (max column sum times max row sum), the
    bound that makes `X_0 = alpha A^T` convergent for any non-singular matrix. On a symmetric matrix both norms are
    equal, so computing `||A||_1` over the wrong axis went unnoticed; this matrix has column sums 2, 12 and row sums
    11, 3."""
    a = torch.tensor([[1.0, 10.0], [1.0, -2.0]], dtype=torch.float64)
    norm_1 = max(sum(abs(float(a[i, j])) for i in range(2)) for j in range(2))  # 12
    norm_inf = max(sum(abs(float(a[i, j])) for j in range(2)) for i in range(2))  # 11
    assert (norm_1, norm_inf) == (12.0, 11.0)
    assert math.isclose(schulz_initial_alpha(a, "transpose"), 1.0 / 132.0, rel_tol=1e-15)
    _, info = schulz_inverse(a, num_iterations=0, init="transpose", tol=None)
    assert math.isclose(info.alpha, 1.0 / 132.0, rel_tol=1e-15)


def test_growth_past_one_and_past_the_start_is_divergence_even_at_the_last_iteration():
    """A residual above both 1 and its start is documented as divergence whatever `tol`. With `A = 2.2`, `X_0 = 1`:
    `R_0 = -1.2`, `R_1 = R_0^2 = 1.44`. A looser bound (e.g. 2 instead of 1) let one iteration return the diverging
    iterate silently."""
    a = torch.tensor([[2.2]], dtype=torch.float64)
    with pytest.raises(SchulzDivergenceError) as err:
        schulz_inverse(a, num_iterations=1, init="identity", alpha=1.0, tol=None)
    assert err.value.info.diverged
    assert err.value.info.residuals == pytest.approx([1.2, 1.44], rel=1e-12)


@pytest.mark.parametrize("num_iterations", [0, 1, 4])
def test_residuals_cover_every_iterate_including_the_returned_one(num_iterations):
    """`info.residuals` holds `||I - A X_k||_F / sqrt(d)` for `k = 0..iterations` and `final_residual` is the one of
    the returned `X`. With `X_0 = alpha I` on a symmetric matrix `R_k = R_0^(2^k)`, so the closed form is
    `sqrt(sum_j (1 - alpha mu_j)^(2^(k+1)) / d)`. An off-by-one loop ran the same iterations but never measured the
    returned iterate (`final_residual` of the previous one, NaN for zero iterations)."""
    mu = [0.2, 0.5, 1.0, 2.0, 4.0]
    a = _spd(5, mu, seed=0)
    alpha = 0.1
    x, info = schulz_inverse(a, num_iterations=num_iterations, init="identity", alpha=alpha, tol=None)
    assert info.iterations == num_iterations
    expected = [math.sqrt(sum((1 - alpha * m) ** (2 ** (k + 1)) for m in mu) / 5) for k in range(num_iterations + 1)]
    assert info.residuals == pytest.approx(expected, rel=1e-10)
    direct = float(torch.linalg.matrix_norm(torch.eye(5, dtype=torch.float64) - a @ x)) / math.sqrt(5)
    assert info.final_residual == pytest.approx(direct, rel=1e-10)


def test_a_residual_that_rounds_to_one_is_not_a_stall():
    """The stall rule only applies once the residual is *below* 1. On a matrix of scale 1e-13 the reference start
    `5e-5 I` leaves a residual of exactly 1.0 in float64 for ~55 iterations while `X` doubles each step; then it
    converges. Treating "1.0, then 1.0" as a rounding floor stopped at iteration 1 with `X = 1e-4 I`."""
    a = _spd(4, [1e-13, 2e-13, 5e-13, 1e-12], seed=1)
    x, info = schulz_inverse(a, num_iterations=100, init="identity", tol=1e-8)
    assert info.residuals[:2] == [1.0, 1.0]
    assert info.converged and not info.stalled
    expected = torch.linalg.inv(a)
    torch.testing.assert_close(x, expected, rtol=1e-7, atol=1e-7 * float(expected.abs().max()))


def test_a_flat_residual_is_not_reported_as_divergence():
    """Divergence means the residual *grows* (`alpha mu_max >= 2`). Here `alpha mu_max = 1` and the residual stays
    exactly at its start (the tiny direction's `1 - alpha mu` rounds to 1): that must not raise
    `SchulzDivergenceError`, whose message blames a too large start scale."""
    a = torch.diag(torch.tensor([1.0, 1e-20], dtype=torch.float64))
    with pytest.warns(UserWarning):  # not converged within the tolerance: a warning, not an error
        _, info = schulz_inverse(a, num_iterations=5, init="frobenius", tol=1e-6)
    assert info.alpha == 1.0 and info.residuals[1] == info.residuals[0]
    assert not info.diverged


# ----------------------------------------------------------------------------------------------------------- engine
def _grads(n, r, d, seed):
    return torch.randn(n, r, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_exact_method_accepts_a_matrix_of_exactly_max_exact_dim():
    """`max_exact_dim` refuses matrices *larger* than it: a `d = max_exact_dim` GFIM is allowed, `d + 1` is not."""
    cfg = InfluenceConfig(method="exact", max_exact_dim=6, dtype=torch.float64)
    InfluenceEngine(cfg, {"a": (2, 6)})
    with pytest.raises(ValueError, match="max_exact_dim"):
        InfluenceEngine(cfg, {"a": (2, 7)})


def test_a_batch_whose_matrices_disagree_on_the_example_count_is_refused():
    """All tracked matrices of one batch must hold the same examples; otherwise `n` (and every score) is wrong.
    Without the check the engine fitted such a batch silently."""
    engine = InfluenceEngine(InfluenceConfig(dtype=torch.float64), {"a": (2, 3), "b": (1, 4)})

    def source():
        yield {"a": _grads(3, 2, 3, 0), "b": _grads(2, 1, 4, 1)}

    with pytest.raises(ValueError, match="same batch size"):
        engine.fit(source)


def test_engine_refuses_an_empty_evaluation_source():
    """`InfluenceEngine.scores` on an evaluation source without examples: an error, not `0 / 0 = NaN` scores."""
    engine = InfluenceEngine(InfluenceConfig(method="tracin", dtype=torch.float64), {"a": (2, 3)})
    engine.fit(_tensor_source({"a": _grads(5, 2, 3, 2)}, 2))
    with pytest.raises(ValueError, match="evaluation set is empty"):
        engine.scores(lambda: iter(()))


# ---------------------------------------------------------------------------------------------------------- ranking
def test_select_lowest_keeps_the_count_nearest_to_the_fraction():
    """`fraction=0.29` of 10 examples keeps the 3 lowest (2.9 rounded), not 2 (truncated)."""
    scores = np.array([5.0, 0.1, 9.0, 0.3, 7.0, 0.2, 8.0, 6.0, 4.0, 3.0])
    np.testing.assert_array_equal(select_lowest_influence(scores, 0.29), [1, 3, 5])


def test_per_group_selection_keeps_at_least_one_example_of_every_group():
    """Per-group selection is documented not to shift group proportions; a small group whose share rounds to zero
    examples (0.1 x 3) still keeps its most helpful one instead of vanishing from the selection."""
    scores = np.arange(23, dtype=np.float64)[::-1].copy()  # 22, 21, ..., 0
    groups = np.array([0] * 20 + [1] * 3)
    kept = select_lowest_influence(scores, 0.1, groups=groups)
    np.testing.assert_array_equal(kept, [18, 19, 22])  # group 0: its 2 lowest; group 1: its lowest (index 22)


def test_recall_at_fraction_inspects_the_nearest_number_of_examples():
    """0.29 of 100 examples is 29 (`0.29 * 100` is 28.999999999999996 in floating point). Examples are ranked by
    descending score; the 29th is the only noisy one past the 10 first, so inspecting 28 finds 10 of 11."""
    scores = np.arange(100, 0, -1, dtype=np.float64)  # example i has rank i
    noisy = np.zeros(100, dtype=bool)
    noisy[:10] = True
    noisy[28] = True
    assert recall_at_fraction(scores, noisy, 0.29) == pytest.approx(11 / 11)
    assert recall_at_fraction(scores, noisy, 0.28) == pytest.approx(10 / 11)
