"""Checks of HyperINF's core math against independent float64 references, written to kill mutants the other tests
let through: the Schulz start scales, the transpose start on a non-symmetric matrix, the extra Schulz damping (also
against a plain transcription of the reference's fixed-iteration recipe) and LiSSA's default scale."""

import math

import numpy as np
import torch

from hf_ext.hyperinf import InfluenceConfig, InfluenceEngine, influence_from_gradients, schulz_inverse
from hf_ext.hyperinf.influence import _tensor_source
from hf_ext.hyperinf.linalg import schulz_initial_alpha


def grads(n, r, d, seed, scale=1.0):
    return scale * torch.randn(n, r, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def explicit_gfim_and_damping(g: torch.Tensor, damping_scale: float = 0.1) -> tuple[torch.Tensor, float]:
    """`(1/n) sum_i g_i^T g_i` and `damping_scale * mean_i mean(g_i^2)`, by loops over the examples."""
    n, _, d = g.shape
    gfim = torch.zeros(d, d, dtype=torch.float64)
    mean_sq = 0.0
    for gi in g:
        gfim += gi.T @ gi
        mean_sq += float((gi * gi).mean())
    return gfim / n, damping_scale * mean_sq / n


def test_schulz_start_scales_are_the_documented_ones():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = a @ a.T + torch.eye(6, dtype=torch.float64)
    fro = math.sqrt(float((a * a).sum()))
    one = max(float(a[:, j].abs().sum()) for j in range(6))
    inf = max(float(a[i, :].abs().sum()) for i in range(6))
    assert math.isclose(schulz_initial_alpha(a, "frobenius"), 1.0 / fro, rel_tol=1e-12)
    assert math.isclose(schulz_initial_alpha(a, "transpose"), 1.0 / (one * inf), rel_tol=1e-12)
    assert schulz_initial_alpha(a, "identity") == 5e-5
    for init in ("frobenius", "transpose", "identity"):
        _, info = schulz_inverse(a, num_iterations=1, init=init, tol=None)
        assert math.isclose(info.alpha, schulz_initial_alpha(a, init), rel_tol=1e-15)


def test_frobenius_start_inverts_a_dominant_direction_matrix_in_log2_cond_iterations():
    """One eigenvalue 1 and the rest 1e-3 (||A||_F ~ mu_max): X_0 = I/||A||_F inverts the top direction at once, so
    about log2(cond) + 5 iterations reach 1e-10. A start twice as large sits next to the edge of convergence
    (alpha mu_max ~ 2) and needs ~22 iterations for the top direction alone."""
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    eig = torch.full((8,), 1e-3, dtype=torch.float64)
    eig[0] = 1.0
    a = (q * eig) @ q.T
    x, info = schulz_inverse(a, num_iterations=18, init="frobenius", tol=1e-10, warn=False)
    assert info.converged
    expected = torch.linalg.solve(a, torch.eye(8, dtype=torch.float64))
    torch.testing.assert_close(x, expected, rtol=1e-8, atol=1e-8 * float(expected.abs().max()))


def test_transpose_start_inverts_a_non_symmetric_matrix():
    """`init="transpose"` (X_0 = alpha A^T) is documented to converge for any non-singular matrix; a start alpha A
    diverges on a matrix with eigenvalues off the positive real axis."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    assert float(torch.linalg.cond(a)) < 1e3
    assert (torch.linalg.eigvals(a @ a).real < 0).any()  # alpha A would not converge
    x, info = schulz_inverse(a, num_iterations=200, init="transpose", tol=1e-12, warn=False)
    assert info.converged
    expected = torch.linalg.solve(a, torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(x, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))


def test_schulz_extra_damping_enters_the_inverted_matrix():
    train = {"a": grads(20, 2, 6, seed=3), "b": grads(20, 3, 4, seed=4, scale=0.5)}
    val = {"a": grads(5, 2, 6, seed=5), "b": grads(5, 3, 4, seed=6, scale=0.5)}
    extra = 0.07
    scores = influence_from_gradients(
        train, val, "hyperinf", dtype=torch.float64, schulz_tol=1e-13, schulz_extra_damping=extra
    )
    expected = torch.zeros(20, dtype=torch.float64)
    for name, g in train.items():
        gfim, lam = explicit_gfim_and_damping(g)
        v = val[name].mean(dim=0)
        damped = gfim + (lam + extra) * torch.eye(gfim.shape[0], dtype=torch.float64)
        hvp = torch.linalg.solve(damped, v.T).T  # v (G + (lambda + c) I)^-1 (damped is symmetric)
        expected -= torch.einsum("nrd,rd->n", g, hvp)
    torch.testing.assert_close(scores, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))
    without = influence_from_gradients(train, val, "hyperinf", dtype=torch.float64, schulz_tol=1e-13)
    assert float((without - scores).abs().max()) > 1e-3 * float(scores.abs().max())  # the option matters here


def test_reference_setting_equals_a_transcription_of_the_reference_recipe():
    """The documented reference-parity options against the reference's recipe written out in numpy:
    lambda = mean_i mean(g_i^2) / 10, A = G + lambda I + 1e-3 I, X_0 = 5e-5 I, 30 steps X <- X (2I - A X),
    score = -sum_l <v_l X, g_l>."""
    train = {"a": grads(30, 2, 5, seed=7, scale=40.0), "b": grads(30, 2, 3, seed=8, scale=30.0)}
    val = {"a": grads(4, 2, 5, seed=9, scale=40.0), "b": grads(4, 2, 3, seed=10, scale=30.0)}
    scores = influence_from_gradients(
        train, val, "hyperinf", dtype=torch.float64,
        schulz_init="identity", schulz_iterations=30, schulz_tol=None, schulz_extra_damping=1e-3,
    )  # fmt: skip
    expected = np.zeros(30)
    for name, g in train.items():
        g = g.numpy()
        lam = np.mean([np.mean(gi**2) for gi in g]) / 10
        a = sum(gi.T @ gi for gi in g) / len(g) + (lam + 1e-3) * np.eye(g.shape[2])
        assert 5e-5 * np.linalg.eigvalsh(a).max() < 2  # the reference start converges here
        x = 5e-5 * np.eye(g.shape[2])
        for _ in range(30):
            x = x @ (2 * np.eye(g.shape[2]) - a @ x)
        hvp = val[name].numpy().mean(axis=0) @ x
        expected -= np.array([np.sum(hvp * gi) for gi in g])
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


def test_lissa_default_scale_is_trace_plus_damping():
    """With the default 10 iterations (far from converged) the scores depend on the scale `s`; the documented default
    is `s = tr(F_l) + lambda_l` per layer."""
    train = {"a": grads(15, 2, 3, seed=11), "b": grads(15, 1, 4, seed=12, scale=3.0)}
    val = {"a": grads(3, 2, 3, seed=13), "b": grads(3, 1, 4, seed=14, scale=3.0)}
    engine = InfluenceEngine(InfluenceConfig(method="lissa", dtype=torch.float64), {"a": (2, 3), "b": (1, 4)})
    engine.fit(_tensor_source(train, 4))
    scores = engine.scores(_tensor_source(val, 4))
    expected = torch.zeros(15, dtype=torch.float64)
    for name, g in train.items():
        flat = g.reshape(15, -1)
        fisher = flat.T @ flat / 15
        lam = 0.1 * float(g.square().mean())
        s = float(torch.trace(fisher)) + lam
        assert math.isclose(engine.layers[name].info["lissa_scale"], s, rel_tol=1e-12)
        v = val[name].mean(dim=0).reshape(-1)
        running = v.clone()
        for _ in range(10):
            running = v + running - (fisher @ running + lam * running) / s
        expected -= flat @ (running / s)
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-12)
