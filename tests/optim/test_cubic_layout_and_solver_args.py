"""CubicNewton takes the closure's flat vector as its own parameters: a `make_flat_loss` function over the same tensors
in another order (or over other tensors) used to run on permuted coordinates, and a subset failed with torch's
`split_with_sizes` error. And `solve_cubic_exact` / the other solvers refuse iteration counts and tolerances that
made them return something else than their minimiser (max_iter <= 0 returned the bisection's upper bracket)."""

import math

import pytest
import torch
from torch import nn

from hf_ext.optim.cubic_newton import (
    CubicNewton,
    FlatParameters,
    cubic_model_value,
    make_flat_loss,
    solve_cubic_exact,
    solve_cubic_gd,
    solve_cubic_lanczos,
)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)

    def forward(self, x, labels):
        return {"loss": ((self.b(torch.tanh(self.a(x))) - labels) ** 2).mean()}


def _setup():
    torch.manual_seed(0)
    batch = {"x": torch.randn(8, 3), "labels": torch.randn(8, 3)}
    torch.manual_seed(1)
    return _Net(), batch


def test_make_flat_loss_attaches_its_layout():
    model, batch = _setup()
    f, flat = make_flat_loss(model, batch)
    assert f.flat is flat
    assert [n for n, _ in model.named_parameters()] == flat.names


def test_the_optimizers_own_order_takes_an_exact_step_that_lowers_the_loss():
    model, batch = _setup()
    opt = CubicNewton(model.parameters(), M=1.0, momentum="none")
    f, _ = make_flat_loss(model, batch)
    with torch.no_grad():
        before = float(model(**batch)["loss"])
        opt.step(lambda: f)
        assert float(model(**batch)["loss"]) < before


def test_parameters_in_another_order_are_refused_before_the_step():
    """Was: accepted, and one exact deterministic step raised the loss (1.128 -> 1.172) where the right order
    lowers it (-> 0.777)."""
    model, batch = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = CubicNewton([*model.b.parameters(), *model.a.parameters()], M=1.0, momentum="none")
    f, _ = make_flat_loss(model, batch)
    with pytest.raises(ValueError, match="same tensors in another order.*a.weight.*model.parameters"):
        opt.step(lambda: f)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert opt.last_stats is None and "step" not in opt._st


def test_a_subset_of_the_parameters_is_refused_by_name():
    """Was: torch's "split_with_sizes expects split_sizes to sum exactly to 12" from inside the gradient."""
    model, batch = _setup()
    opt = CubicNewton(model.b.parameters(), M=1.0, momentum="none")
    f, _ = make_flat_loss(model, batch)
    with pytest.raises(ValueError, match=r"other tensors \(4 tensors, 24 entries.*2 tensors, 12 entries\)"):
        opt.step(lambda: f)
    # the pair form (f_grad, f_hess) is checked too
    g, _ = make_flat_loss(model, batch)
    with pytest.raises(ValueError, match="other tensors"):
        opt.step(lambda: (g, g))


def test_a_hand_built_flat_loss_of_another_size_gets_a_clear_error():
    """A function built on its own `FlatParameters` (no `.flat` attribute) is checked by the vector's size."""
    model, batch = _setup()
    flat = FlatParameters(list(model.parameters()))
    buffers = dict(model.named_buffers())
    names = [n for n, _ in model.named_parameters()]

    def f(x):
        params = dict(zip(names, flat.split(x)))
        return torch.func.functional_call(model, (params, buffers), args=(), kwargs=batch)["loss"]

    opt = CubicNewton(model.a.parameters(), M=1.0, momentum="none")
    with pytest.raises(ValueError, match=r"FlatParameters.split got a vector of shape \(12,\).*24 entries"):
        opt.step(lambda: f)


G = torch.tensor([1.0, 0.5], dtype=torch.float64)
H = torch.diag(torch.tensor([-1.0, 2.0], dtype=torch.float64))


def test_solve_cubic_exact_default_reaches_the_minimiser():
    h = solve_cubic_exact(G, H, 1.0)
    assert cubic_model_value(G, H @ h, h, 1.0) == pytest.approx(-3.102518, abs=1e-6)


@pytest.mark.parametrize("max_iter", [0, -3, True, 2.5, "400"])
def test_solve_cubic_exact_refuses_a_bad_max_iter(max_iter):
    """Was: 0 and -3 accepted, returning the upper bracket h(exp(lhi)) (m = -1.876 against the minimiser's -3.103)."""
    with pytest.raises(ValueError, match="`max_iter` must be a positive int"):
        solve_cubic_exact(G, H, 1.0, max_iter=max_iter)


@pytest.mark.parametrize("tol", [-1e-3, math.nan, math.inf, True, "1e-15"])
def test_solvers_refuse_a_bad_tol(tol):
    with pytest.raises(ValueError, match="`tol` must be a finite number >= 0"):
        solve_cubic_exact(G, H, 1.0, tol=tol)
    with pytest.raises(ValueError, match="`tol` must be a finite number >= 0"):
        solve_cubic_lanczos(G, lambda v: H @ v, 1.0, tol=tol)
    with pytest.raises(ValueError, match="`tol` must be a finite number >= 0"):
        solve_cubic_gd(G, lambda v: H @ v, 1.0, tol=tol)


def test_solve_cubic_gd_refuses_bad_perturbation_step_scale_and_lipschitz():
    hvp = lambda v: H @ v  # noqa: E731
    with pytest.raises(ValueError, match="`perturbation` must be a finite number >= 0"):
        solve_cubic_gd(G, hvp, 1.0, perturbation=math.nan)
    with pytest.raises(ValueError, match="`step_scale` must lie in"):
        solve_cubic_gd(G, hvp, 1.0, step_scale=True)
    with pytest.raises(ValueError, match="`lipschitz` must be a finite number > 0"):
        solve_cubic_gd(G, hvp, 1.0, lipschitz=0.0)
    # tol 0 is allowed (run every iteration)
    h, calls = solve_cubic_gd(G, hvp, 1.0, tol=0.0, max_iter=5)
    assert calls == 5 + 10 + 1 and torch.isfinite(h).all()
