"""Update rules checked step by step against independent float64 references written from docs/optim.md.

Each test pins down a piece of core math that a small change (a swapped beta, a misplaced weight decay, a wrong
factor in the cubic secular equation, reversed momentum weights, ...) would alter while the coarser property tests
still pass. The references below re-implement the documented rules directly; the cubic references solve the
sub-problem with their own root finder (`scipy.optimize.brentq` on the secular equation), checked against a
multi-start BFGS minimisation of the cubic model.
"""

import copy
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, minimize
from torch import nn

from hf_ext.optim import Lion, LionA, LionAR, RotationalWrapper, equilibrium_angle
from hf_ext.optim.cubic_newton import (
    CubicNewton,
    cubic_model_value,
    solve_cubic_exact,
    solve_cubic_gd,
    solve_cubic_lanczos,
)

D64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------------
# float64 references for the Lion family
# ----------------------------------------------------------------------------------------------------------------------
def _ref_lion_c(m, g, b1, b2, nesterov):
    """Returns (c, new m): Lion interpolation c (b1) and momentum EMA (b2); Nesterov uses the updated momentum."""
    if nesterov:
        m = b2 * m + (1 - b2) * g
        return b1 * m + (1 - b1) * g, m
    return b1 * m + (1 - b1) * g, b2 * m + (1 - b2) * g


def _grads(shape, steps, seed, zeros=False):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        g = torch.randn(shape, generator=gen, dtype=D64)
        if zeros:
            g.view(-1)[: g.numel() // 3] = 0.0  # zero gradient entries: some signs are zero at step 1
        out.append(g)
    return out


@pytest.mark.parametrize("nesterov", [False, True])
def test_lion_matches_float64_rule_with_distinct_betas_and_decoupled_decay(nesterov):
    b1, b2, lr, wd = 0.7, 0.95, 0.05, 0.3
    p = nn.Parameter(torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=D64))
    ref, m = p.detach().clone(), torch.zeros(5, 4, dtype=D64)
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd, nesterov=nesterov)
    for g in _grads((5, 4), 6, 1):
        p.grad = g.clone()
        opt.step()
        c, m = _ref_lion_c(m, g, b1, b2, nesterov)
        ref = ref - lr * (torch.sign(c) + wd * ref)  # decoupled decay on the pre-update weight, times lr
    torch.testing.assert_close(p.detach(), ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=0, atol=1e-13)


def _ref_snr(st, g, m, b2, sb, t):
    """`1/sqrt(1 + SNR)` from docs/optim.md (finite-t c_t, bias-corrected EMAs; factor 1 while c ~ 1)."""
    bc = 1 - b2**t
    c_t = (1 - b2) / (1 + b2) * (1 - b2 ** (2 * t)) / bc**2
    for key, val in (("g2", float(g.pow(2).sum())), ("m2", float(m.pow(2).sum()) / bc**2), ("c", c_t)):
        st[key] = sb * st.get(key, 0.0) + (1 - sb) * val
    corr = 1 - sb**t
    eg2, em2, ec = st["g2"] / corr, st["m2"] / corr, st["c"] / corr
    if 1 - ec < 1e-6:
        return 1.0
    signal = max(em2 - ec * eg2, 0.0) / (1 - ec)
    noise = max(eg2 - em2, 0.0) / (1 - ec)
    return 1 / math.sqrt(1 + signal / (noise + 1e-30))


@pytest.mark.parametrize("snr", [False, True])
def test_lion_a_matches_float64_rule(snr):
    """LionA: u = sign(c) sqrt(n)/||sign(c)||, p -= lr (s_t u + wd p), s_t = (1 - b2^t) [* SNR factor]."""
    b1, b2, lr, wd, sb = 0.8, 0.9, 0.02, 0.2, 0.7
    gen = torch.Generator().manual_seed(2)
    p = nn.Parameter(torch.randn(6, 5, generator=gen, dtype=D64))
    ref, m, st = p.detach().clone(), torch.zeros(6, 5, dtype=D64), {}
    opt = LionA(
        [p], lr=lr, betas=(b1, b2), weight_decay=wd, inverse_bias_correction=True, snr_correction=snr, snr_beta=sb
    )
    mu = torch.randn(6, 5, generator=gen, dtype=D64)
    for t, noise in enumerate(_grads((6, 5), 7, 3, zeros=True), start=1):
        g = noise + (0.5 * mu if t > 1 else 0.0)  # some signal, so the SNR factor is not 1
        p.grad = g.clone()
        opt.step()
        c, m = _ref_lion_c(m, g, b1, b2, False)
        u = torch.sign(c)
        u = u * math.sqrt(u.numel() / float(u.abs().sum()))
        s = 1 - b2**t
        if snr:
            s *= _ref_snr(st, g, m, b2, sb, t)
        ref = ref - lr * (s * u + wd * ref)
    # (the SNR statistics are accumulated in float32, hence the looser tolerance with snr_correction)
    torch.testing.assert_close(p.detach(), ref, rtol=0, atol=1e-8 if snr else 1e-12)


def _ref_rotate(W, u, r, theta, zero_mean, ema=None, decay=0.0, t=1):
    """Rotate each row of W against u by theta on the sphere of radius r (rows are neurons); returns (W, ema)."""
    if zero_mean:
        u = u - u.mean(dim=1, keepdim=True)
    wh = W / W.norm(dim=1, keepdim=True)
    up = u - (u * wh).sum(1, keepdim=True) * wh
    un = up.norm(dim=1, keepdim=True)
    th = torch.full_like(un, theta)
    if decay > 0:
        ema = decay * (torch.zeros_like(un) if ema is None else ema) + (1 - decay) * un**2
        th = theta * un / (ema / (1 - decay**t)).sqrt()
    return r * (torch.cos(th) * wh - torch.sin(th) * up / un), ema


def _ref_init(W, zero_mean):
    r = W.norm(dim=1, keepdim=True)  # the initial norm is recorded, then the centred neuron is rescaled to it
    if zero_mean:
        W = W - W.mean(dim=1, keepdim=True)
        W = W * r / W.norm(dim=1, keepdim=True)
    return W, r


@pytest.mark.parametrize("neuron_dim", [0, 1])
@pytest.mark.parametrize("decay", [0.0, 0.8])
def test_lion_ar_matches_float64_rotation(neuron_dim, decay):
    """LionAR on a rotational tensor: centre + keep the initial norm, rotate against the centred sign direction by
    `angle * lr_t/lr_0 * (1 - b2^t)` (per neuron, EMA-normalised when `update_norm_decay > 0`)."""
    b1, b2, lr, angle = 0.8, 0.95, 1e-2, 0.05
    gen = torch.Generator().manual_seed(4)
    W0 = torch.randn(4, 6, generator=gen, dtype=D64) + 0.7  # non-zero means: centring matters
    p = nn.Parameter(W0.clone() if neuron_dim == 0 else W0.T.clone())
    opt = LionAR(
        [{"params": [p], "rotational": True, "neuron_dim": neuron_dim}],
        lr=lr,
        betas=(b1, b2),
        angle=angle,
        inverse_bias_correction=True,
        update_norm_decay=decay,
    )
    rows = (lambda x: x) if neuron_dim == 0 else (lambda x: x.T)
    W, r = _ref_init(W0, True)
    m, ema = torch.zeros_like(W0), None
    for t, g in enumerate(_grads(W0.shape, 5, 5), start=1):
        if t == 4:
            opt.param_groups[0]["lr"] = lr * 0.3  # an LR schedule scales the angle linearly
        p.grad = rows(g).clone()
        opt.step()
        c, m = _ref_lion_c(m, g, b1, b2, False)
        theta = angle * opt.param_groups[0]["lr"] / lr * (1 - b2**t)
        W, ema = _ref_rotate(W, torch.sign(c), r, theta, True, ema, decay, t)
        torch.testing.assert_close(rows(p.detach()), W, rtol=0, atol=1e-12, msg=f"step {t}")
    torch.testing.assert_close(rows(p.detach()).norm(dim=1), r.squeeze(1), rtol=0, atol=1e-12)


def test_rotational_wrapper_adamw_direction_matches_float64_reference():
    """Rotational AdamW: direction m_hat/(sqrt(v_hat) + eps) (eps outside the square root, after bias correction),
    for both the fused and the unfused path; gradients of the size of eps make its placement visible."""
    b1, b2, eps, lr, wd, decay = 0.8, 0.9, 1e-3, 1e-2, 0.1, 0.9
    gen = torch.Generator().manual_seed(6)
    W0 = torch.randn(3, 5, generator=gen, dtype=D64)
    grads = [1e-3 * g for g in _grads((3, 5), 4, 7)]
    angle = equilibrium_angle("adamw", lr, wd, (b1, b2))
    W, r = _ref_init(W0, True)
    m, v, ema = torch.zeros_like(W0), torch.zeros_like(W0), None
    for t, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        W, ema = _ref_rotate(W, u, r, angle, True, ema, decay, t)
    for fused in (True, False):
        p = nn.Parameter(W0.clone())
        opt = RotationalWrapper(
            [{"params": [p], "rotational": True, "neuron_dim": 0}],
            inner="adamw",
            lr=lr,
            weight_decay=wd,
            betas=(b1, b2),
            eps=eps,
            update_norm_decay=decay,
            fused=fused,
        )
        for g in grads:
            p.grad = g.clone()
            opt.step()
        torch.testing.assert_close(p.detach(), W, rtol=0, atol=1e-10, msg=f"fused={fused}")


def test_lion_equilibrium_angle_closed_form_sets_lion_ar_default_angle():
    """docs/optim.md: Lion `sqrt(pi/2) sqrt(2 lr wd) sqrt((1-b1)^2 + b1^2 (1-b2)/(1+b2))`; at b1 = b2 = 0.5 the
    momentum-variance term is a third of the whole, so a wrong power of b1 shows. LionAR's default angle is it."""
    lr, wd, b1, b2 = 0.05, 0.5, 0.5, 0.5
    ref = math.sqrt(math.pi / 2) * math.sqrt(2 * lr * wd) * math.sqrt((1 - b1) ** 2 + b1**2 * (1 - b2) / (1 + b2))
    assert math.isclose(equilibrium_angle("lion", lr, wd, (b1, b2)), ref, rel_tol=1e-12)
    p = nn.Parameter(torch.randn(3, 4))
    opt = LionAR([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    assert math.isclose(opt.group_angle(opt.param_groups[0]), ref, rel_tol=1e-12)


def test_rotational_wrapper_resume_restores_inner_state_of_plain_tensors():
    """Tensors the inner AdamW updates (biases) must resume with their moments, not from zero."""
    gen = torch.Generator().manual_seed(8)
    W0, b0 = torch.randn(3, 4, generator=gen, dtype=D64), torch.randn(3, generator=gen, dtype=D64)
    grads = [(g, g[:, 0].clone()) for g in _grads((3, 4), 6, 9)]

    def make():
        w, b = nn.Parameter(W0.clone()), nn.Parameter(b0.clone())
        groups = [
            {"params": [w], "rotational": True, "neuron_dim": 0},
            {"params": [b], "rotational": False, "weight_decay": 0.0},
        ]
        return w, b, RotationalWrapper(groups, inner="adamw", lr=1e-2, weight_decay=0.1)

    def run(w, b, opt, gs):
        for gw, gb in gs:
            w.grad, b.grad = gw.clone(), gb.clone()
            opt.step()

    wa, ba, oa = make()
    run(wa, ba, oa, grads)
    wb, bb, ob = make()
    run(wb, bb, ob, grads[:3])
    sd = copy.deepcopy(ob.state_dict())
    wc, bc, oc = make()
    with torch.no_grad():
        wc.copy_(wb)
        bc.copy_(bb)
    oc.load_state_dict(sd)
    run(wc, bc, oc, grads[3:])
    torch.testing.assert_close(bc.detach(), ba.detach(), rtol=0, atol=0)
    torch.testing.assert_close(wc.detach(), wa.detach(), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# cubic Newton: independent sub-problem reference
# ----------------------------------------------------------------------------------------------------------------------
def _ref_cubic_step(g, H, M):
    """Global minimiser of g.h + h.Hh/2 + M/6 |h|^3 (non-hard case) via brentq on the secular equation."""
    g, H = np.asarray(g, dtype=float), np.asarray(H, dtype=float)
    lam, Q = np.linalg.eigh(0.5 * (H + H.T))
    gt = Q.T @ g
    r0 = max(0.0, -2 * lam[0] / M)

    def phi(r):
        return np.linalg.norm(gt / (lam + M * r / 2)) - r

    lo = r0 + 1e-12 * (1 + r0)
    hi = r0 + math.sqrt(2 * np.linalg.norm(g) / M) + 1.0
    assert phi(lo) > 0 > phi(hi), "reference needs a non-hard-case problem"
    r = brentq(phi, lo, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
    return -Q @ (gt / (lam + M * r / 2))


def _model(g, H, M, h):
    return float(g @ h + 0.5 * h @ H @ h + M / 6 * np.linalg.norm(h) ** 3)


def _problem(d, seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d))
    return rng.normal(size=d), (A + A.T) / 2, float(rng.uniform(0.3, 3.0))


@pytest.mark.parametrize("seed", range(4))
def test_cubic_solvers_return_the_brute_force_minimiser(seed):
    d = 3
    g, H, M = _problem(d, seed)
    h_ref = _ref_cubic_step(g, H, M)
    # the reference itself against a multi-start BFGS minimisation of the model
    rng = np.random.default_rng(100 + seed)
    best = min(
        (
            minimize(
                lambda h: _model(g, H, M, h),
                rng.normal(size=d) * 3,
                jac=lambda h: g + H @ h + M / 2 * np.linalg.norm(h) * h,
                method="BFGS",
                options={"gtol": 1e-12},
            )
            for _ in range(20)
        ),
        key=lambda res: res.fun,
    )
    np.testing.assert_allclose(h_ref, best.x, atol=1e-5)
    gt, Ht = torch.tensor(g, dtype=D64), torch.tensor(H, dtype=D64)
    hvp = lambda v: Ht @ v  # noqa: E731
    np.testing.assert_allclose(solve_cubic_exact(gt, Ht, M).numpy(), h_ref, atol=1e-10)
    np.testing.assert_allclose(solve_cubic_lanczos(gt, hvp, M, krylov_dim=d)[0].numpy(), h_ref, atol=1e-8)
    hg = solve_cubic_gd(gt, hvp, M, max_iter=20000, tol=1e-11)[0]
    np.testing.assert_allclose(hg.numpy(), h_ref, atol=1e-6)
    h = torch.tensor(h_ref, dtype=D64)
    assert math.isclose(cubic_model_value(gt, Ht @ h, h, M), _model(g, H, M, h_ref), rel_tol=1e-12)


def test_exact_solver_hard_case_has_the_minimal_model_value():
    H = np.diag([-2.0, 1.0, 3.0])
    g = np.array([0.0, 0.3, -0.2])  # no component on the negative eigenvector
    M = 1.5
    h = solve_cubic_exact(torch.tensor(g, dtype=D64), torch.tensor(H, dtype=D64), M).numpy()
    # closed form: r = -2 lam_min / M, h = -(H + M r/2)^+ g + tau e_0 with ||h|| = r
    r = 4.0 / 1.5
    rest = np.array([0.0, -0.3 / (1 + 2), 0.2 / (3 + 2)])
    tau = math.sqrt(r**2 - rest @ rest)
    assert math.isclose(np.linalg.norm(h), r, rel_tol=1e-9)
    assert math.isclose(_model(g, H, M, h), _model(g, H, M, rest + tau * np.eye(3)[0]), rel_tol=1e-9)


# ----------------------------------------------------------------------------------------------------------------------
# cubic Newton: the optimizer against a float64 re-implementation of its documented rules
# ----------------------------------------------------------------------------------------------------------------------
Q4 = 0.3  # quartic coefficient: Hessians depend on x, so where each derivative is taken matters


def _samples(d, n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        A = rng.normal(size=(d, d))
        out.append(((A + A.T) / 2, rng.normal(size=d)))
    return out


def _torch_f(sample):
    A, c = (torch.tensor(x, dtype=D64) for x in sample)
    return lambda x: 0.5 * x @ A @ x + c @ x + Q4 / 4 * (x**4).sum()


def _f(s, x):
    return float(0.5 * x @ s[0] @ x + s[1] @ x + Q4 / 4 * (x**4).sum())


def _grad(s, x):
    return s[0] @ x + s[1] + Q4 * x**3


def _hess(s, x):
    return s[0] + 3 * Q4 * np.diag(x**2)


def _weight(base, power, t):
    if t == 1:
        return 1.0
    return max(base, t ** (-power)) if power > 0 else base


def _ref_cubic_newton(pairs, x0, kw):
    """The documented CubicNewton rules (docstring / docs/optim.md) in numpy float64; returns the iterates."""
    M, lr = kw.get("M", 1.0), kw.get("lr", 1.0)
    mom, hess_mode = kw.get("momentum", "hessian_corrected"), kw.get("hessian", "dense")
    alpha, beta = kw.get("alpha", 0.1), kw.get("beta", 0.1)
    ap, bp, cap, K = (
        kw.get("alpha_power", 0.0),
        kw.get("beta_power", 0.0),
        kw.get("max_extrapolation", 10.0),
        kw.get("hessian_window", 5),
    )
    M_eff = M * (2.0 if kw.get("cubic_convention", "M/6") == "M/3" else 1.0)
    x, x_prev, g_est, H_est, window, xs, stats = x0.copy(), None, None, None, [], [], []
    for t, (sg, sh) in enumerate(pairs, start=1):
        a = 1.0 if mom == "none" else _weight(alpha, ap, t)
        b = 1.0 if mom == "none" else _weight(beta, bp, t)
        if hess_mode == "dense":
            Hn = _hess(sh, x)
            H_est = Hn if (H_est is None or b >= 1) else (1 - b) * H_est + b * Hn
            H = H_est
        elif hess_mode == "window" and b < 1:
            window = (window + [(sh, x.copy())])[-K:]
            n = len(window)
            w = np.array([b * (1 - b) ** (n - 1 - i) for i in range(n)])
            w = w / w.sum()
            H = sum(wi * _hess(si, xi) for wi, (si, xi) in zip(w, window))
        else:
            window = [(sh, x.copy())]
            H = _hess(sh, x)
        if mom == "extrapolated" and x_prev is not None and a < 1:
            gn = _grad(sg, x + min((1 - a) / a, cap) * (x - x_prev))
        else:
            gn = _grad(sg, x)
        if g_est is None or a >= 1:
            g_est = gn
        elif mom == "hessian_corrected" and x_prev is not None:
            Hc = H if hess_mode == "dense" else _hess(sh, x)
            g_est = (1 - a) * (g_est + Hc @ (x - x_prev)) + a * gn
        else:
            g_est = (1 - a) * g_est + a * gn
        h = _ref_cubic_step(g_est, H, M_eff)
        stats.append(dict(alpha=a, beta=b, decrease=-_model(g_est, H, M_eff, h)))
        x_prev, x = x, x + lr * h
        xs.append(x.copy())
    return xs, stats


CASES = {
    "ema-dense": dict(momentum="ema", hessian="dense", alpha=0.3, beta=0.4),
    "extrapolated-dense-lr": dict(momentum="extrapolated", hessian="dense", alpha=0.4, beta=0.3, lr=0.7),
    "extrapolated-capped": dict(momentum="extrapolated", hessian="dense", alpha=0.1, max_extrapolation=2.0),
    "hessian_corrected-dense": dict(momentum="hessian_corrected", hessian="dense", alpha=0.3, beta=0.5),
    "hessian_corrected-fresh": dict(momentum="hessian_corrected", hessian="fresh", alpha=0.3, solver="lanczos"),
    "ema-window": dict(momentum="ema", hessian="window", alpha=0.4, beta=0.3, hessian_window=3),
    "schedules": dict(momentum="ema", hessian="dense", alpha=0.05, beta=0.05, alpha_power=0.5, beta_power=1.0),
    "M/3": dict(momentum="ema", hessian="dense", alpha=0.3, beta=0.3, cubic_convention="M/3", M=0.8),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cubic_newton_matches_float64_reference(case):
    kw = {"M": 2.0, **CASES[case]}
    d, steps = 4, 6
    grad_samples, hess_samples = _samples(d, steps, 10), _samples(d, steps, 11)
    x0 = np.random.default_rng(12).normal(size=d) * 0.5
    xs, stats = _ref_cubic_newton(list(zip(grad_samples, hess_samples)), x0, kw)
    w = nn.Parameter(torch.tensor(x0, dtype=D64))
    opt = CubicNewton([w], **kw)
    for t, (sg, sh) in enumerate(zip(grad_samples, hess_samples)):
        opt.step(lambda sg=sg, sh=sh: (_torch_f(sg), _torch_f(sh)))
        np.testing.assert_allclose(w.detach().numpy(), xs[t], rtol=0, atol=1e-8, err_msg=f"step {t + 1}")
        assert math.isclose(opt.last_stats.alpha, stats[t]["alpha"]) and math.isclose(
            opt.last_stats.beta, stats[t]["beta"]
        )
        assert math.isclose(opt.last_stats.model_decrease, stats[t]["decrease"], rel_tol=1e-6, abs_tol=1e-10)


def test_adaptive_M_doubles_until_the_model_bounds_f_and_halves_after():
    """momentum='none', M_rule='adaptive': M doubles until f(x + h) <= f(x) + m(h), the step uses that M, and the
    next step starts from half of it (not below M_min)."""
    d = 3
    s = _samples(d, 1, 20)[0]
    x = np.random.default_rng(21).normal(size=d) * 2.0
    M, M_min, M_max = 1e-3, 1e-4, 1e6
    w = nn.Parameter(torch.tensor(x, dtype=D64))
    opt = CubicNewton([w], M=M, M_min=M_min, M_max=M_max, momentum="none", M_rule="adaptive")
    doubled = 0
    for _ in range(5):
        g, H = _grad(s, x), _hess(s, x)
        Mc = M
        h = _ref_cubic_step(g, H, Mc)
        rounding = 16 * np.finfo(np.float64).eps * abs(_f(s, x))
        resolution = 16 * np.finfo(np.float64).eps * np.linalg.norm(x)
        while np.linalg.norm(h) > resolution and not _f(s, x + h) <= _f(s, x) + _model(g, H, Mc, h) + rounding:
            if Mc >= M_max:
                break
            Mc = min(2 * Mc, M_max)
            h = _ref_cubic_step(g, H, Mc)
            doubled += 1
        x, M = x + h, max(Mc / 2, M_min)
        opt.step(lambda: _torch_f(s))
        assert math.isclose(opt.last_stats.M, Mc, rel_tol=1e-12)
        assert math.isclose(opt.param_groups[0]["M"], M, rel_tol=1e-12)
        np.testing.assert_allclose(w.detach().numpy(), x, rtol=0, atol=1e-8)
    assert doubled > 0  # the acceptance test did reject steps


# ----------------------------------------------------------------------------------------------------------------------
# regressions for defects found while writing the references above
# ----------------------------------------------------------------------------------------------------------------------
def test_lion_a_applies_decoupled_decay_when_every_sign_is_zero():
    """docs: `p -= lr (s_t u + wd p)` with `u = 0` when every sign is zero; the decay used to be skipped."""
    for cls in (Lion, LionA):
        p = nn.Parameter(torch.ones(3, dtype=D64))
        opt = cls([p], lr=0.1, weight_decay=0.5)
        p.grad = torch.zeros(3, dtype=D64)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.full((3,), 0.95, dtype=D64), msg=cls.__name__)


def test_adaptive_M_bounds_apply_to_M_in_its_convention():
    """With cubic_convention='M/3', `M_min`/`M_max` bound the `M` the user passes (its convention); they used to be
    compared with the internal M/6 value (twice as large), so M fell below M_min, the cap was M_max/2 and the
    acceptance test was skipped whenever 2 M >= M_max."""
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=D64))
    w = nn.Parameter(torch.zeros(3, dtype=D64))
    opt = CubicNewton([w], M=1.0, M_min=1.0, M_max=10.0, momentum="none", M_rule="adaptive", cubic_convention="M/3")
    for _ in range(3):
        opt.step(lambda: lambda x: 0.5 * x @ A @ x + x.sum())  # convex quadratic: every step is accepted
        assert opt.param_groups[0]["M"] == 1.0  # halved, then clamped at M_min
    # 2 M = 16 >= M_max = 10 but M = 8 < M_max: the acceptance test must still run and raise M to M_max
    s = _samples(3, 1, 20)[0]
    x = np.random.default_rng(21).normal(size=3) * 2.0
    w = nn.Parameter(torch.tensor(x, dtype=D64))
    opt = CubicNewton([w], M=1e-3, M_max=1e-2, momentum="none", M_rule="adaptive", cubic_convention="M/3")
    opt.step(lambda: _torch_f(s))
    g, H = _grad(s, x), _hess(s, x)
    h = _ref_cubic_step(g, H, 2e-3)
    assert not _f(s, x + h) <= _f(s, x) + _model(g, H, 2e-3, h)  # rejected at M: the rule must double
    assert opt.last_stats.M == 1e-2  # capped at M_max (reported in the optimizer's convention, like M_max)
    assert opt.param_groups[0]["M"] == 1e-2 / 2
