"""Behaviours of CubicNewton and LionAR that a second mutation-testing pass found unchecked.

Each test pins one behaviour that a small change to the code (a flipped comparison, a dropped line, a threshold off by
ten orders of magnitude) altered while every other test still passed. The expected values are computed here
independently (closed forms, float64 references, the dense exact cubic solver).
"""

import math

import pytest
import torch
from torch import nn

from hf_ext.optim import LionAR
from hf_ext.optim.cubic_newton import (
    CubicNewton,
    cubic_model_value,
    solve_cubic_exact,
    solve_cubic_gd,
    solve_cubic_lanczos,
)

D64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------------
# CubicNewton
# ----------------------------------------------------------------------------------------------------------------------
def _quadratic_step(max_step_norm):
    """One CubicNewton step (no momentum) on 0.5 x^T A x + sum(x) from 0; returns (step taken, optimizer)."""
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=D64))
    w = nn.Parameter(torch.zeros(3, dtype=D64))
    opt = CubicNewton([w], M=1.0, momentum="none", max_step_norm=max_step_norm)
    opt.step(lambda: lambda x: 0.5 * x @ A @ x + x.sum())
    return w.detach().clone(), opt


def test_cubic_newton_max_step_norm_caps_only_steps_longer_than_the_cap():
    """`max_step_norm` rescales a step longer than the cap to exactly the cap (same direction) and leaves shorter
    steps alone. With the comparison flipped (`n < cap`) a binding cap did nothing (step norm 0.86 for a cap of 0.05)
    and a loose cap stretched every step up to the cap."""
    free, _ = _quadratic_step(None)
    free_norm = float(free.norm())
    assert 0.5 < free_norm < 1.0  # the uncapped step (about 0.86): the caps below are binding / loose

    capped, opt = _quadratic_step(0.05)
    assert opt.last_stats.step_norm == pytest.approx(0.05, rel=1e-12)
    torch.testing.assert_close(capped, free * (0.05 / free_norm), rtol=1e-12, atol=1e-15)

    loose, opt = _quadratic_step(10.0)
    assert opt.last_stats.step_norm == pytest.approx(free_norm, rel=1e-12)
    torch.testing.assert_close(loose, free, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fraction", [0.7, 0.99])
def test_cubic_newton_max_step_norm_binds_just_below_the_free_step(fraction):
    """A cap a little below the free step's length is binding too: the step is shortened to exactly the cap. A
    comparison against a multiple of the cap (`n > 2 * cap`) left every step between the cap and twice the cap
    unchanged, so the documented bound on the step length did not hold (0.86 for a cap of 0.6)."""
    free, _ = _quadratic_step(None)
    free_norm = float(free.norm())
    cap = fraction * free_norm
    capped, opt = _quadratic_step(cap)
    assert opt.last_stats.step_norm == pytest.approx(cap, rel=1e-12)
    assert float(capped.norm()) == pytest.approx(cap, rel=1e-12)
    torch.testing.assert_close(capped, free * fraction, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("d", [5, 20])
def test_solve_cubic_gd_finds_the_minimiser_in_the_exact_hard_case(d):
    """Exact hard case: `g` has no component on the eigenvector of the most negative eigenvalue (-8). Gradient
    descent started at the Cauchy point (a multiple of `g`) never leaves span{g, Hg, ...} without the seeded random
    perturbation of that point; with it, the model value reaches the exact solver's (-341.5 at d=5). Without the
    perturbation the solver stopped at -9.8 (d=5) and -11.9 (d=20)."""
    lam = torch.cat([torch.tensor([-8.0], dtype=D64), torch.linspace(-2, 10, d - 1, dtype=D64)])
    H = torch.diag(lam)
    g = torch.ones(d, dtype=D64)
    g[0] = 0.0
    M = 1.0
    h_exact = solve_cubic_exact(g, H, M)
    h_gd, _ = solve_cubic_gd(g, lambda v: H @ v, M)
    exact = cubic_model_value(g, H @ h_exact, h_exact, M)
    gd = cubic_model_value(g, H @ h_gd, h_gd, M)
    assert exact < -300  # the minimiser lies along e0: ||h|| = 16 gives -8 * 128 + 4096 / 6
    assert abs(gd - exact) <= 1e-3 * abs(exact)


def test_solve_cubic_lanczos_at_zero_gradient_finds_negative_curvature():
    """At an exact saddle (`g = 0`) the Lanczos solver starts its Krylov space from a random vector, so it still
    finds the negative-curvature step (model -16/3 for H = diag(-2, 1, 3), M = 1). Started from `g` itself, the
    Lanczos recursion divided by ||g|| = 0 and the solver raised a non-finite ValueError; so did
    `CubicNewton(solver="lanczos")` at the saddle of x^T H x / 2, which must instead move away from it."""
    H = torch.diag(torch.tensor([-2.0, 1.0, 3.0], dtype=D64))
    g = torch.zeros(3, dtype=D64)
    h, _ = solve_cubic_lanczos(g, lambda v: H @ v, 1.0, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(h).all())
    h_exact = solve_cubic_exact(g, H, 1.0)
    value = cubic_model_value(g, H @ h, h, 1.0)
    assert value < 0
    assert value == pytest.approx(cubic_model_value(g, H @ h_exact, h_exact, 1.0), abs=1e-6)
    assert value == pytest.approx(-16.0 / 3.0, abs=1e-6)

    w = nn.Parameter(torch.zeros(3, dtype=D64))
    opt = CubicNewton([w], M=1.0, momentum="none", hessian="fresh", solver="lanczos")
    opt.step(lambda: lambda x: 0.5 * x @ H @ x)
    x = w.detach()
    assert float(0.5 * x @ H @ x) < -1.0  # left the saddle along e0 (the cubic step has length 4)
    assert abs(float(x[0])) == pytest.approx(4.0, abs=1e-6)


def test_solve_cubic_lanczos_keeps_its_basis_orthogonal_on_an_ill_conditioned_problem():
    """Lanczos with full re-orthogonalisation: on d = 400 with eigenvalues spread over 1e-3..1e3 (and one at -2), plain
    Lanczos loses orthogonality as soon as a Ritz value converges (max|V V^T - I| about 0.9 at k = 120), the reduced
    problem is wrong and the step misses the minimiser. With it, the basis stays orthonormal to rounding and the
    Krylov step at k = 120 reaches the dense exact solver's model value."""
    from hf_ext.optim.cubic_newton import _lanczos

    gen = torch.Generator().manual_seed(0)
    d, M = 400, 1.0
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=D64, generator=gen))
    lam = torch.cat([torch.tensor([-2.0, 1e3, 5e2], dtype=D64), torch.logspace(-3, 1, d - 3, dtype=D64)])
    H = Q @ torch.diag(lam) @ Q.T
    g = torch.randn(d, dtype=D64, generator=gen)

    def hvp(v):
        return H @ v

    h_exact = solve_cubic_exact(g, H, M)
    exact = cubic_model_value(g, H @ h_exact, h_exact, M)
    h, calls = solve_cubic_lanczos(g, hvp, M, krylov_dim=120)
    assert calls == 120
    assert cubic_model_value(g, H @ h, h, M) == pytest.approx(exact, rel=1e-8)
    assert float((h - h_exact).norm()) < 1e-6 * float(h_exact.norm())
    for k in (20, 120):
        V, T, calls = _lanczos(hvp, g, k, 1e-10)
        assert V.shape == (k, d) and calls == k
        loss_of_orthogonality = float((V @ V.T - torch.eye(k, dtype=D64)).abs().max())
        assert loss_of_orthogonality < 1e-10, (k, loss_of_orthogonality)
        torch.testing.assert_close(T, V @ H @ V.T, rtol=0, atol=1e-8)  # the tridiagonal is H's projection


def test_rebuild_window_without_recorded_samples_returns_zero_and_the_next_step_warns():
    """A `hessian="window"` state whose steps were taken with `step(closure)` holds no samples. `rebuild_window`
    must then rebuild nothing (return 0, never call `make_loss`) and leave the next step to warn and refill the
    window. Without the check for missing samples it called `make_loss(None)` for every entry (a trainer's make_loss
    then crashed on `None.items()`)."""
    A = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=D64)
    A = A + A.T

    def f(x):
        return 0.5 * x @ A @ x + (x**4).sum()

    w = nn.Parameter(torch.ones(4, dtype=D64))
    kw = dict(momentum="ema", hessian="window", solver="lanczos", M=5.0)
    opt = CubicNewton([w], **kw)
    for _ in range(3):
        opt.step(lambda: f)  # no sample recorded
    state = opt.state_dict()

    resumed = CubicNewton([w], **kw)
    resumed.load_state_dict(state)
    calls = []

    def make_loss(sample):
        calls.append(sample)
        return f

    assert resumed.rebuild_window(make_loss) == 0
    assert calls == []
    with pytest.warns(UserWarning, match="state was not rebuilt"):
        resumed.step(lambda: f)


def test_extrapolated_momentum_reports_the_loss_at_the_current_point():
    """With `momentum="extrapolated"` the gradient is taken at the extrapolated point `y`, but the loss returned by
    `step()` and stored in `last_stats.loss` is `f(x_t)` at the current parameters (what a trainer logs). Reporting
    `f(y)` instead gave 0.30 instead of 2.12 at the second step."""
    A = torch.diag(torch.tensor([1.0, 4.0], dtype=D64))

    def f(x):
        return 0.5 * x @ A @ x + 0.25 * (x**4).sum()

    w = nn.Parameter(torch.tensor([2.0, -1.0], dtype=D64))
    opt = CubicNewton([w], M=5.0, momentum="extrapolated", alpha=0.5)
    for _ in range(3):
        x = w.detach().clone()
        expected = 0.5 * float(x[0]) ** 2 + 2.0 * float(x[1]) ** 2 + 0.25 * float((x**4).sum())
        returned = opt.step(lambda: f)
        assert returned == pytest.approx(expected, rel=1e-12)
        assert opt.last_stats.loss == pytest.approx(expected, rel=1e-12)
    assert not torch.equal(w.detach(), x)  # the steps moved: x_prev exists from the second step on


# ----------------------------------------------------------------------------------------------------------------------
# LionAR
# ----------------------------------------------------------------------------------------------------------------------
def test_lionar_plain_group_gets_lion_with_its_own_weight_decay():
    """A non-rotational group (`rotational=False`) gets plain Lion with its group's decoupled weight decay:
    `p <- p (1 - lr wd) - lr sign(c)`. Without the decay line the plain tensor kept its norm (a zero-gradient tensor
    stayed at 1.0 instead of 0.95^10)."""
    b1, b2, lr, wd = 0.9, 0.99, 0.1, 0.5
    gen = torch.Generator().manual_seed(0)
    rot = nn.Parameter(torch.randn(3, 3, generator=gen, dtype=D64))
    emb = nn.Parameter(torch.randn(4, 3, generator=gen, dtype=D64))
    opt = LionAR(
        [{"params": [rot], "neuron_dim": 0}, {"params": [emb], "rotational": False, "weight_decay": wd}],
        lr=lr,
        betas=(b1, b2),
        weight_decay=0.1,
    )
    ref, m = emb.detach().clone(), torch.zeros(4, 3, dtype=D64)
    for _ in range(5):
        g = torch.randn(4, 3, generator=gen, dtype=D64)
        emb.grad, rot.grad = g.clone(), torch.randn(3, 3, generator=gen, dtype=D64)
        opt.step()
        c = b1 * m + (1 - b1) * g
        m = b2 * m + (1 - b2) * g
        ref = ref * (1 - lr * wd) - lr * torch.sign(c)
    torch.testing.assert_close(emb.detach(), ref, rtol=0, atol=1e-13)


def test_lionar_rotation_restores_each_neuron_to_its_recorded_norm():
    """Every LionAR step brings each neuron back to the norm recorded at its first step (`state["norm"]`), also when
    the weights were changed outside the optimizer (here scaled in place by 1.5, as a user edit or a load would).
    Without the factor `r / ||w||` in the rotation the norms stayed at 1.5 times the recorded ones."""
    gen = torch.Generator().manual_seed(1)
    w = nn.Parameter(torch.randn(4, 8, generator=gen, dtype=D64))
    opt = LionAR([w], lr=1e-3, weight_decay=1.0)
    w.grad = torch.randn(4, 8, generator=gen, dtype=D64)
    opt.step()
    recorded = opt.state[w]["norm"].reshape(-1).clone()
    torch.testing.assert_close(w.detach().norm(dim=1), recorded, rtol=1e-12, atol=0)
    with torch.no_grad():
        w.mul_(1.5)
    w.grad = torch.randn(4, 8, generator=gen, dtype=D64)
    opt.step()
    torch.testing.assert_close(opt.state[w]["norm"].reshape(-1), recorded, rtol=0, atol=0)
    torch.testing.assert_close(w.detach().norm(dim=1), recorded, rtol=1e-12, atol=0)


def test_lionar_rotates_a_nearly_radial_direction_by_the_target_angle():
    """A neuron whose Lion direction is almost radial (1000 entries, sign pattern equal to the weight's except two
    swapped entries: ||u_perp||^2 / ||u||^2 = 0.008) still has a tangential part and must rotate by the target angle.
    With the `moving` threshold raised from 1e-12 to 1e-2 such a neuron did not move at all."""
    n, angle = 1000, 0.05
    base = torch.tensor([1.0, -1.0], dtype=D64).repeat(n // 2).view(1, n)  # zero-mean neuron
    grad = base.clone()
    grad[0, 0], grad[0, 1] = -1.0, 1.0
    w = nn.Parameter(base.clone())
    opt = LionAR([w], lr=1e-3, weight_decay=1.0, angle=angle, betas=(0.0, 0.0))
    w.grad = grad
    opt.step()
    new = w.detach()
    cos = float((new @ base.T) / (new.norm() * base.norm()))
    assert math.acos(min(cos, 1.0)) == pytest.approx(angle, abs=1e-9)
    assert float(new.norm()) == pytest.approx(float(base.norm()), rel=1e-12)
