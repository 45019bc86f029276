"""Schulz's iteration, the dense solvers and the width/rank sweep of `hf_ext.hyperinf.reproduce`, checked against
float64 references written out independently (hand formulas, numpy loops, `torch.linalg.solve`)."""

import math
import warnings

import numpy as np
import pytest
import torch

from hf_ext.hyperinf import (
    SchulzConvergenceWarning,
    SchulzDivergenceError,
    influence_from_gradients,
    lissa_hvp,
    lissa_hvp_reference,
    schulz_inverse,
)
from hf_ext.hyperinf.linalg import damping_from_gradients, schulz_initial_alpha


def grads(n, r, d, seed, scale=1.0):
    return scale * torch.randn(n, r, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def spd(d, seed, low=0.5, high=2.0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.linspace(low, high, d, dtype=torch.float64)) @ q.T


# ------------------------------------------------------------------------------------------------ Schulz's iteration


def test_transpose_start_scale_uses_column_and_row_sums_of_a_non_symmetric_matrix():
    """`alpha = 1 / (||A||_1 ||A||_inf)`: max column sum times max row sum, which differ on a non-symmetric matrix."""
    a = torch.tensor([[1.0, 5.0, 0.0], [0.0, 1.0, 0.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    norm_1 = max(sum(abs(float(a[i, j])) for i in range(3)) for j in range(3))  # column sums: 1, 8, 1
    norm_inf = max(sum(abs(float(a[i, j])) for j in range(3)) for i in range(3))  # row sums: 6, 1, 3
    assert (norm_1, norm_inf) == (8.0, 6.0)
    assert math.isclose(schulz_initial_alpha(a, "transpose"), 1.0 / 48.0, rel_tol=1e-15)
    _, info = schulz_inverse(a, num_iterations=0, init="transpose")
    assert math.isclose(info.alpha, 1.0 / 48.0, rel_tol=1e-15)


def test_residuals_are_frobenius_norms_over_sqrt_d():
    """`info.residuals[k] = ||I - A X_k||_F / sqrt(d)`, starting with `X_0 = alpha I`."""
    d = 9
    a = spd(d, seed=0)
    alpha = 0.3
    _, info = schulz_inverse(a, num_iterations=2, init="identity", alpha=alpha)
    eye = np.eye(d)
    an = a.numpy()
    x = alpha * eye
    expected = []
    for _ in range(3):
        expected.append(np.sqrt(((eye - an @ x) ** 2).sum()) / np.sqrt(d))
        x = x @ (2 * eye - an @ x)
    np.testing.assert_allclose(info.residuals, expected, rtol=1e-12)


def test_zero_iterations_return_the_start():
    """`num_iterations=0` is a valid budget: the start `alpha I` comes back with its residual."""
    a = spd(5, seed=1)
    x, info = schulz_inverse(a, num_iterations=0, init="identity", alpha=0.25)
    torch.testing.assert_close(x, 0.25 * torch.eye(5, dtype=torch.float64))
    assert info.iterations == 0 and len(info.residuals) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(matrix=torch.zeros(0, 0, dtype=torch.float64)),
        dict(matrix=torch.eye(3, dtype=torch.float64), num_iterations=True),
        dict(matrix=torch.eye(3, dtype=torch.float64), alpha=-0.5),
        dict(matrix=torch.eye(3, dtype=torch.float64), alpha=math.inf),
        dict(matrix=torch.eye(3, dtype=torch.float64), alpha=math.nan),
    ],
)
def test_schulz_refuses_bad_arguments_with_a_value_error(kwargs):
    with pytest.raises(ValueError, match="must be"):
        schulz_inverse(**kwargs)


def test_warn_false_silences_the_convergence_warning():
    a = spd(6, seed=2, low=1e-3, high=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SchulzConvergenceWarning)
        _, info = schulz_inverse(a, num_iterations=2, init="frobenius", tol=1e-10, warn=False)
    assert not info.converged
    with pytest.warns(SchulzConvergenceWarning, match="iteration budget ran out"):
        schulz_inverse(a, num_iterations=2, init="frobenius", tol=1e-10)


def test_schulz_defaults_are_the_reference_thirty_steps_from_five_e_minus_five():
    """Documented defaults: `num_iterations=30`, `init="identity"` (`X_0 = 5e-5 I`), no tolerance."""
    d = 4
    a = spd(d, seed=3, low=1e-4, high=1e-2)  # 5e-5 * mu_min * 2^30 ~ 5: the start still shows after 30 steps
    x, info = schulz_inverse(a)
    an, eye = a.numpy(), np.eye(d)
    ref = 5e-5 * eye
    for _ in range(30):
        ref = ref @ (2 * eye - an @ ref)
    assert info.alpha == 5e-5 and info.iterations == 30 and not info.converged
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-9)
    assert np.abs(ref @ an - eye).max() > 1e-3  # not yet the inverse: any other start or budget differs


def test_schulz_extra_iteration_is_not_run_past_the_budget():
    a = spd(6, seed=4)
    _, info = schulz_inverse(a, num_iterations=3, init="identity", alpha=0.1)
    assert info.iterations == 3 and len(info.residuals) == 4


# ------------------------------------------------------------------------------------------------ LiSSA


def test_damping_rule_is_scale_times_mean_square():
    """DataInf's rule `lambda = scale * (1/n) sum_i mean(g_i^2)`, scale 0.1 by default."""
    g = grads(5, 2, 3, seed=14)
    mean_sq = sum(float((gi * gi).mean()) for gi in g) / 5
    assert math.isclose(damping_from_gradients(mean_sq), 0.1 * mean_sq, rel_tol=1e-15)
    assert math.isclose(damping_from_gradients(torch.tensor(mean_sq, dtype=torch.float64), scale=0.35), 0.35 * mean_sq, rel_tol=1e-12)


def test_lissa_short_recursion_starts_from_v_and_runs_ten_steps_by_default():
    """With few steps (far from converged) the result depends on the start `r_0 = v` and on the default depth 10."""
    gen = torch.Generator().manual_seed(5)
    b = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    f = b @ b.T / 6
    v = torch.randn(6, generator=gen, dtype=torch.float64)
    lam = 0.2
    s = float(torch.trace(f)) + lam
    fn, vn = f.numpy(), v.numpy()
    r = vn.copy()
    for _ in range(10):
        r = vn + r - (fn @ r + lam * r) / s
    got = lissa_hvp(v, lambda x: f @ x, lam, s)
    np.testing.assert_allclose(got.numpy(), r / s, rtol=1e-12)
    with pytest.raises(ValueError, match="scale"):
        lissa_hvp(v, lambda x: f @ x, lam, 0.0)


def test_lissa_reference_recursion_is_the_reference_update():
    """`r <- v + r - alpha (F r - lambda r)`, with `F` the mean outer product and `alpha` honoured, written out with
    one loop over examples."""
    g = grads(7, 2, 3, seed=6, scale=0.3)
    v = grads(1, 2, 3, seed=7)[0]
    lam, alpha, steps = 0.05, 0.7, 6
    flat = g.reshape(7, -1).numpy()
    vf = v.reshape(-1).numpy()
    r = vf.copy()
    for _ in range(steps):
        fr = sum(np.outer(gi, gi) @ r for gi in flat) / len(flat)
        r = vf + r - alpha * (fr - lam * r)
    got = lissa_hvp_reference(v, g, lam, num_iterations=steps, alpha=alpha)
    np.testing.assert_allclose(got.reshape(-1).numpy(), r, rtol=1e-12)


# ------------------------------------------------------------------------------------------------ the sweep


def _synthetic(monkeypatch):
    """Replace the LoRA fine-tune of the sweep by fixed gradients (two tracked matrices)."""
    import hf_ext.hyperinf.reproduce as reproduce

    gen = torch.Generator().manual_seed(1)

    def outer(n, r, d, scale):  # per-example rank-one gradients u_i w_i^T, as LoRA's are for one token
        u = torch.randn(n, r, 1, generator=gen, dtype=torch.float64)
        return scale * u * torch.randn(n, 1, d, generator=gen, dtype=torch.float64)

    train = {"a": outer(40, 2, 4, 1.0), "b": outer(40, 2, 3, 2.0)}
    val = {"a": outer(6, 2, 4, 1.0), "b": outer(6, 2, 3, 2.0)}
    calls = []

    def fake(width, rank, seed, **kwargs):
        calls.append((width, rank, seed))
        return ({k: t.float() for k, t in train.items()}, {k: t.float() for k, t in val.items()},
                {"train_accuracy": 0.5, "seconds": 0.0})  # fmt: skip

    monkeypatch.setattr(reproduce, "lora_gradients", fake)
    return train, val, calls


def _dense_scores(train, val, curvature):
    """Float64 influence `-sum_l <v_l H_l^-1, g_l>` with `H` the damped FIM, GFIM, or none (TracIn)."""
    out = torch.zeros(next(iter(train.values())).shape[0], dtype=torch.float64)
    for name, g in train.items():
        n = g.shape[0]
        v = val[name].mean(dim=0)
        lam = 0.1 * float(g.square().mean())
        if curvature == "fim":
            flat = g.reshape(n, -1)
            f = flat.T @ flat / n + lam * torch.eye(flat.shape[1], dtype=torch.float64)
            out -= flat @ torch.linalg.solve(f, v.reshape(-1))
        elif curvature == "gfim":
            gf = torch.einsum("nri,nrj->ij", g, g) / n + lam * torch.eye(g.shape[2], dtype=torch.float64)
            out -= torch.einsum("nrd,rd->n", g, torch.linalg.solve(gf, v.T).T)
        else:
            out -= torch.einsum("nrd,rd->n", g, v)
    return out.numpy()


def test_sweep_correlations_are_against_the_exact_fim_and_gfim_solves(monkeypatch):
    from scipy.stats import spearmanr

    from hf_ext.hyperinf.reproduce import accuracy_sweep

    train, val, _ = _synthetic(monkeypatch)
    (record,) = accuracy_sweep(seeds=(0,), widths=(8,), width_rank=2, ranks=(), methods=("tracin",), verbose=False)
    tracin = _dense_scores(train, val, None)
    rho_fim = spearmanr(tracin, _dense_scores(train, val, "fim")).statistic
    rho_gfim = spearmanr(tracin, _dense_scores(train, val, "gfim")).statistic
    assert abs(rho_fim - rho_gfim) > 0.05  # the two references rank differently here
    assert record.spearman_fim == pytest.approx(rho_fim, abs=1e-3)
    assert record.spearman_gfim == pytest.approx(rho_gfim, abs=1e-3)


def test_sweep_fim_column_at_the_size_limit_and_configs_run_once(monkeypatch):
    """`exact_fim` is skipped only where `rank * width > max_fim_dim`; a (width, rank) pair listed twice (in the width
    and the rank sweep) is measured once."""
    from hf_ext.hyperinf.reproduce import accuracy_sweep

    _, _, calls = _synthetic(monkeypatch)
    records = accuracy_sweep(seeds=(0,), widths=(8,), width_rank=2, ranks=(2,), rank_width=8, methods=("tracin",),
                             max_fim_dim=16, verbose=False)  # fmt: skip
    assert calls == [(8, 2, 0)] and len(records) == 1
    assert records[0].spearman_fim is not None  # 2 * 8 = 16 <= 16
    (over,) = accuracy_sweep(seeds=(0,), widths=(8,), width_rank=2, ranks=(), methods=("tracin",), max_fim_dim=15,
                             verbose=False)  # fmt: skip
    assert over.spearman_fim is None


def test_summary_and_table_spread_over_seeds():
    from hf_ext.hyperinf.reproduce import SweepRecord, markdown_table, summarize

    def rec(seed, gfim, fim, secs):
        return SweepRecord(seed, 64, 4, "datainf", gfim, fim, secs, secs / 2, 0.9)

    records = [rec(0, 0.5, 0.2, 1.0), rec(1, 0.9, 0.6, 3.0), rec(2, 0.7, None, 2.0)]
    (row,) = summarize(records)
    assert row["seeds"] == 3
    assert (row["rho_gfim_mean"], row["rho_gfim_min"], row["rho_gfim_max"]) == pytest.approx((0.7, 0.5, 0.9))
    assert (row["rho_fim_mean"], row["rho_fim_min"], row["rho_fim_max"]) == pytest.approx((0.4, 0.2, 0.6))
    assert row["seconds_mean"] == pytest.approx(2.0) and row["cpu_seconds_mean"] == pytest.approx(1.0)
    assert "| 64 | 4 | datainf | 0.700 [0.500, 0.900] | 0.400 [0.200, 0.600] | 1.000 | 2.000 |" in markdown_table([row])


def test_reference_sweep_setting_is_the_reference_recipe():
    """`SWEEP_METHODS["hyperinf_reference"]` is the reference's recipe: X_0 = 5e-5 I, 30 fixed steps of
    X <- X (2I - A X) on A = G + lambda I + 1e-3 I (here small gradients, so the 1e-3 and the step count matter),
    and it raises where that start diverges (5e-5 mu_max >= 2)."""
    from hf_ext.hyperinf.reproduce import SWEEP_METHODS

    options = {k: v for k, v in SWEEP_METHODS["hyperinf_reference"].items() if k != "method"}
    train = {"a": grads(30, 2, 5, seed=12, scale=0.05)}
    val = {"a": grads(4, 2, 5, seed=13, scale=0.05)}
    scores = influence_from_gradients(train, val, SWEEP_METHODS["hyperinf_reference"]["method"],
                                      dtype=torch.float64, **options)  # fmt: skip
    g = train["a"].numpy()
    lam = np.mean([np.mean(gi**2) for gi in g]) / 10
    a = sum(gi.T @ gi for gi in g) / len(g) + (lam + 1e-3) * np.eye(5)
    x = 5e-5 * np.eye(5)
    for _ in range(30):
        x = x @ (2 * np.eye(5) - a @ x)
    expected = -np.array([np.sum((val["a"].numpy().mean(axis=0) @ x) * gi) for gi in g])
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    big = {"a": grads(30, 2, 5, seed=12, scale=300.0)}
    with pytest.raises(SchulzDivergenceError):
        influence_from_gradients(big, big, "hyperinf", dtype=torch.float64, **options)


def test_topic_task_flips_exactly_the_noisy_share_to_another_label():
    """`noise_rate * n` distinct examples get a label different from their topic (read off the token blocks)."""
    from hf_ext.hyperinf.reproduce import topic_task

    vocab, labels, seq_len = 400, 4, 64
    train, val, is_noisy = topic_task(50, 10, seq_len, vocab, labels, 0.3, seed=0)
    assert len(train) == 50 and len(val) == 10 and int(is_noisy.sum()) == 15
    block = vocab // labels
    for row, noisy in zip(train, is_noisy):
        topic = np.bincount(np.array(row["input_ids"]) // block, minlength=labels).argmax()
        assert (row["labels"] != topic) == bool(noisy)
    for row in val:
        assert row["labels"] == np.bincount(np.array(row["input_ids"]) // block, minlength=labels).argmax()


def test_lora_gradients_returns_train_then_validation_gradients():
    from hf_ext.hyperinf.reproduce import lora_gradients

    train, val, info = lora_gradients(width=8, rank=2, seed=0, num_train=12, num_val=5, seq_len=4, vocab_size=64,
                                      train_steps=1)  # fmt: skip
    assert set(train) == set(val) and len(train) == 2
    for name in train:
        assert train[name].shape[0] == 12 and val[name].shape[0] == 5
        assert train[name].shape[1] == 2
    assert 0.0 <= info["train_accuracy"] <= 1.0
