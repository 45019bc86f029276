"""Regressions for the cubic Newton audit: non-finite samples with every solver, a failed step
leaving the optimizer untouched, low-precision parameters, `last_stats.M` in the user's convention, and the GD solver
at an exact saddle."""

import math

import pytest
import torch
from torch import nn

from hf_ext.optim import CubicNewton, CubicNewtonTrainer, CubicNewtonTrainingArguments
from hf_ext.optim.cubic_newton import cubic_model_value, solve_cubic_exact, solve_cubic_gd

D = 6
_gen = torch.Generator().manual_seed(1)
_A = torch.randn(8, D, D, generator=_gen, dtype=torch.float64)
_A = (_A + _A.transpose(1, 2)) / 2
_B = torch.randn(8, D, generator=_gen, dtype=torch.float64)


def _f(i):
    A, B = _A[i % 8], _B[i % 8]
    return lambda x: 0.5 * x @ A @ x + B @ x + 0.25 * (x**4).sum()


def _nan_f(x):  # non-finite loss and gradient (a NaN feature)
    return (x * float("nan")).sum() + 0.5 * (x**2).sum()


def _nan_curvature(x):  # non-finite Hessian-vector products
    return float("nan") * (x**2).sum()


# few gd iterations: what these tests check (state after a failed step, bit-exact later steps) does not depend on
# how far the solver runs, and each Hessian-vector product costs tens of ms of torch.func overhead on CPU; for the same
# reason the gd configurations with Hessian-vector products take them by double backward (the same H v at a fraction
# of forward-over-reverse's overhead; the lanczos ones keep the default "auto" mode)
CONFIGS = {
    "dense-exact-extrapolated": dict(M=2.0, momentum="extrapolated", hessian="dense"),
    "dense-gd-hessian_corrected": dict(M=2.0, momentum="hessian_corrected", hessian="dense", solver="gd", gd_iters=8),
    "fresh-lanczos-hessian_corrected": dict(
        M=2.0, momentum="hessian_corrected", hessian="fresh", solver="lanczos", krylov_dim=4
    ),
    "fresh-gd-ema": dict(M=2.0, momentum="ema", hessian="fresh", solver="gd", gd_iters=8, hvp_mode="double_backward"),
    "window-gd-hessian_corrected": dict(
        M=2.0,
        momentum="hessian_corrected",
        hessian="window",
        hessian_window=3,
        solver="gd",
        gd_iters=8,
        hvp_mode="double_backward",
    ),
    "window-lanczos-ema-M/3": dict(
        M=2.0, momentum="ema", hessian="window", hessian_window=3, solver="lanczos", cubic_convention="M/3"
    ),
    "adaptive-none": dict(M=2.0, momentum="none", M_rule="adaptive", hessian="dense"),
}

BAD_CLOSURES = {
    "nan-loss": lambda: _nan_f,
    "nan-hessian-sample-only": lambda: (_f(7), _nan_curvature),  # finite gradient sample, non-finite Hessian sample
}


def _fresh(kw):
    p = nn.Parameter(torch.full((D,), 0.3, dtype=torch.float64))
    return p, CubicNewton([p], **kw)


def _good_step(opt, t):
    opt.set_closure(lambda t=t: _f(t), sample=t)
    return opt.step()


def _snapshot(opt, p):
    """Everything a step may change: the state dict (tensors copied), the param group, the saved window, last_stats
    and the parameters."""
    sd = opt.state_dict()
    window = sd.get("window")
    return (
        {k: (v.clone() if torch.is_tensor(v) else v) for k, v in sd["state"][0].items()},
        dict(sd["param_groups"][0]),
        (
            [x.clone() for x in window["points"]] if window else None,
            list(window["samples"]) if window else None,
        ),
        opt.last_stats,
        p.detach().clone(),
    )


def _assert_same(a, b):
    state_a, groups_a, window_a, stats_a, p_a = a
    state_b, groups_b, window_b, stats_b, p_b = b
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        if torch.is_tensor(state_a[k]):
            assert torch.equal(state_a[k], state_b[k]), k
        else:
            assert state_a[k] == state_b[k], k
    assert groups_a == groups_b
    points_a, samples_a = window_a
    points_b, samples_b = window_b
    assert (points_a is None) == (points_b is None)
    if points_a is not None:
        assert len(points_a) == len(points_b) and all(torch.equal(x, y) for x, y in zip(points_a, points_b))
        assert samples_a == samples_b
    assert stats_a == stats_b
    assert torch.equal(p_a, p_b)


@pytest.mark.parametrize("solver", ["exact", "lanczos", "gd"])
def test_every_solver_refuses_a_non_finite_sample(solver):
    """The gd solver used to write NaN into the parameters without an error (exact and lanczos raised)."""
    hessian = "dense" if solver == "exact" else "fresh"
    # 8 gd iterations (not 500) for the two good steps before: the refusal does not depend on how far the solver ran
    p, opt = _fresh(dict(M=2.0, momentum="ema", hessian=hessian, solver=solver, krylov_dim=4, gd_iters=8))
    for t in range(2):
        _good_step(opt, t)
    before = p.detach().clone()
    with pytest.raises(ValueError, match="non-finite gradient or Hessian"):
        opt.step(lambda: _nan_f)
    assert torch.equal(p.detach(), before)
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("solver", ["lanczos", "gd"])
def test_non_finite_hessian_vector_products_are_refused(solver):
    """A finite gradient sample with a non-finite Hessian sample (the pair closure): the gd solver used to turn the
    NaN HVPs into NaN parameters."""
    p, opt = _fresh(dict(M=2.0, momentum="ema", hessian="fresh", solver=solver, krylov_dim=4))
    _good_step(opt, 0)
    before = p.detach().clone()
    with pytest.raises(ValueError, match="non-finite gradient or Hessian"):
        opt.step(lambda: (_f(1), _nan_curvature))
    assert torch.equal(p.detach(), before)


def test_solve_cubic_gd_refuses_non_finite_inputs():
    H = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    g = torch.tensor([1.0, float("nan"), 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="non-finite gradient or Hessian"):
        solve_cubic_gd(g, lambda v: H @ v, 1.0)
    g = torch.tensor([1.0, 0.3, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="non-finite gradient or Hessian"):
        solve_cubic_gd(g, lambda v: v * float("inf"), 1.0)


@pytest.mark.parametrize("bad", list(BAD_CLOSURES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_a_failed_step_leaves_all_optimizer_state_as_before(config, bad):
    """A step that raises on a non-finite sample used to increment the step counter and overwrite the gradient
    estimate (and Hessian EMA, window, ...) with NaN, so every later good step raised too. Now the state dict, the
    param group, the window, last_stats and the parameters are unchanged, and the following good steps are bit for bit
    those of an optimizer that never saw the bad sample."""
    kw = CONFIGS[config]
    p, opt = _fresh(kw)
    p_ref, ref = _fresh(kw)
    for t in range(3):
        _good_step(opt, t)
        _good_step(ref, t)
    before = _snapshot(opt, p)
    opt.set_closure(BAD_CLOSURES[bad], sample=99)
    with pytest.raises(ValueError, match="non-finite gradient or Hessian"):
        opt.step()
    _assert_same(_snapshot(opt, p), before)
    for t in range(3, 7):
        loss = _good_step(opt, t)
        loss_ref = _good_step(ref, t)
        assert loss == loss_ref
        assert torch.equal(p.detach(), p_ref.detach()), t
        assert opt.last_stats == ref.last_stats
    _assert_same(_snapshot(opt, p), _snapshot(ref, p_ref))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_are_refused_at_construction(dtype):
    p = nn.Parameter(torch.zeros(3, dtype=dtype))
    with pytest.raises(ValueError, match=r"float32 \(or float64\).*model\.float\(\)"):
        CubicNewton([p])
    for ok in (torch.float32, torch.float64):
        CubicNewton([nn.Parameter(torch.zeros(3, dtype=ok))])


def test_last_stats_M_is_in_the_users_convention():
    """With cubic_convention='M/3' and M=10, last_stats.M (and the trainer's cubic/M log) reported 20, the internal
    M/6 value, while param_groups' M, M_min and M_max are in the user's convention."""
    p = nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = CubicNewton([p], M=10.0, cubic_convention="M/3", momentum="none")
    opt.step(lambda: lambda x: (x**2).sum())
    assert opt.last_stats.M == 10.0 == opt.param_groups[0]["M"]
    # adaptive: the M the step was solved with, capped at M_max as passed
    s = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def f(x):
        return (x * s).sum() - (x**3).sum() + (x**4).sum()

    p = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    opt = CubicNewton([p], M=1e-3, M_max=1e-2, momentum="none", M_rule="adaptive", cubic_convention="M/3")
    opt.step(lambda: f)
    assert opt.last_stats.M <= 1e-2
    assert math.isclose(opt.param_groups[0]["M"], max(opt.last_stats.M / 2, 1e-6))


def test_gd_solver_leaves_an_exact_saddle_along_negative_curvature():
    """g = 0 with negative curvature: the gd solver returned a zero step forever (lanczos and exact move)."""
    d = 6
    H = torch.diag(torch.tensor([1.0, -1.0, 0.0, 0.0, 2.0, 0.5], dtype=torch.float64))
    g = torch.zeros(d, dtype=torch.float64)
    for M in (1.0, 10.0):
        h, calls = solve_cubic_gd(g, lambda v: H @ v, M)
        he = solve_cubic_exact(g, H, M)
        exact = cubic_model_value(g, H @ he, he, M)
        assert exact < 0
        assert cubic_model_value(g, H @ h, h, M) <= exact + 1e-6 * abs(exact)
        assert calls <= 500 + 12
    # positive semi-definite H with g = 0: h = 0 is the answer, as for the exact solver
    H = torch.diag(torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64))
    h, _ = solve_cubic_gd(torch.zeros(3, dtype=torch.float64), lambda v: H @ v, 1.0)
    assert torch.equal(h, torch.zeros(3, dtype=torch.float64))
    # through the optimizer, from the saddle of 1/2 (x0^2 - x1^2) + 1/4 x1^4 (minima at x1 = +-1)
    sad = lambda x: 0.5 * (x[0] ** 2 - x[1] ** 2) + 0.25 * x[1] ** 4 + 0.0 * x[2:].sum()  # noqa: E731
    p = nn.Parameter(torch.zeros(d, dtype=torch.float64))
    # double backward: the same H v as the default forward-over-reverse at a tenth of its torch.func overhead here
    opt = CubicNewton([p], M=1.0, momentum="none", hessian="fresh", solver="gd", hvp_mode="double_backward")
    opt.step(lambda: sad)
    assert abs(abs(float(p.detach()[1])) - 2.0) < 1e-5  # the exact solver's step from the saddle: |x1| = 2
    for _ in range(8):
        opt.step(lambda: sad)
    x = p.detach()
    assert abs(abs(float(x[1])) - 1.0) < 1e-6 and abs(float(x[0])) < 1e-6


class _Reg(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x, y):
        return {"loss": ((self.lin(x).squeeze(-1) - y) ** 2).mean()}


def _reg_data(nan_at=None):
    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(3, generator=g), "y": torch.randn((), generator=g)} for _ in range(16)]
    if nan_at is not None:
        data[nan_at]["x"][1] = float("nan")
    return data


def _reg_args(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=2, max_steps=8, use_cpu=True, report_to="none",
                logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True, cubic_hessian="fresh",
                cubic_krylov_dim=4, dataloader_drop_last=True)  # fmt: skip
    base.update(kw)
    return CubicNewtonTrainingArguments(**base)


@pytest.mark.parametrize("solver", ["gd", "lanczos"])
def test_trainer_refuses_a_nan_batch_with_every_solver(tmp_path, solver):
    """CubicNewtonTrainer(cubic_solver='gd') used to finish with all-NaN weights and logged losses of 0.0."""
    torch.manual_seed(0)
    model = _Reg()
    tr = CubicNewtonTrainer(model=model, args=_reg_args(tmp_path, cubic_solver=solver), train_dataset=_reg_data(5))
    with pytest.raises(ValueError, match="non-finite gradient or Hessian"):
        tr.train()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_trainer_logs_M_in_its_convention(tmp_path):
    torch.manual_seed(0)
    args = _reg_args(tmp_path, max_steps=2, cubic_M=10.0, cubic_convention="M/3")
    tr = CubicNewtonTrainer(model=_Reg(), args=args, train_dataset=_reg_data())
    tr.train()
    logged = [r["cubic/M"] for r in tr.state.log_history if "cubic/M" in r]
    assert logged == [10.0, 10.0]


# The default momentum ------------------------------------------------------------------------------------------------
def _deterministic_problems():
    d = 5
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    H = Q @ torch.diag(torch.linspace(-1, 3, d, dtype=torch.float64)) @ Q.T
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    return {
        "convex": lambda x: 0.5 * x @ (H + 2 * eye) @ x + b @ x + 0.25 * (x**4).sum(),
        "indefinite": lambda x: 0.5 * x @ H @ x + b @ x + 0.25 * (x**4).sum(),
    }


@pytest.mark.parametrize("M", [1.0, 10.0])
@pytest.mark.parametrize("problem", ["convex", "indefinite"])
def test_default_momentum_converges_on_deterministic_problems(problem, M):
    """Was: the default `extrapolated` momentum (factor (1-a)/a = 9 at a = 0.1, under the cap of 10) extrapolated
    9x a Newton-sized step and diverged on these smooth problems (f: -1.05, 224, 7.9e7, ... 1e208), silently. The
    default is now `hessian_corrected`, which converges (linearly, ~(1-a) per step): below 1e-8 after 171-187 steps
    here. The run stops 10 steps after the gradient norm first fell below 1e-8 (at most 300 steps), which must hold
    then too."""
    f = _deterministic_problems()[problem]
    p = torch.nn.Parameter(torch.full((5,), 0.5, dtype=torch.float64))
    opt = CubicNewton([p], M=M)
    assert opt.param_groups[0]["momentum"] == "hessian_corrected"
    first = None
    for t in range(1, 301):
        opt.step(lambda: f)
        if first is None and float(torch.func.grad(f)(p.detach()).norm()) < 1e-8:
            first = t
        if first is not None and t == first + 10:
            break
    assert first is not None, "the gradient norm never fell below 1e-8 in 300 steps"
    assert float(torch.func.grad(f)(p.detach()).norm()) < 1e-8


def test_trainer_passes_the_extrapolation_cap():
    from hf_ext.optim import CubicNewtonTrainingArguments

    args = CubicNewtonTrainingArguments(
        output_dir="unused", cubic_momentum="extrapolated", cubic_max_extrapolation=1.0
    )
    assert args.cubic_newton_kwargs()["max_extrapolation"] == 1.0
    assert CubicNewtonTrainingArguments(output_dir="unused").cubic_momentum == "hessian_corrected"
