"""op45 audit fixes: an optimizer state saved for other parameters is refused at `load_state_dict` (F1); the update
metrics refuse tensors of different shapes instead of broadcasting them (F2); the cubic solvers refuse a non-float
gradient / Hessian instead of truncating the step to an integer dtype (F3)."""

import math

import pytest
import torch
from torch import nn

from hf_ext.optim import (
    LionAR,
    gradient_momentum_cosine,
    l2_update_norm,
    make_normalized_optimizer,
    relative_representation_change,
    relative_update_norms,
    solve_cubic_exact,
    solve_cubic_gd,
    solve_cubic_lanczos,
)

OPTIMIZERS = ["adamw", "lion", "lion_a", "lion_ar", "rotational_adamw", "rotational_lion", "rotational_sgdm"]


def _mlp(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 4))


def _stepped_state(name: str, hidden: int = 8) -> dict:
    model = _mlp(hidden)
    opt = make_normalized_optimizer(model, name, lr=1e-2, weight_decay=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return opt.state_dict()


# ----------------------------------------------------------------------------------------------------------------------
# F1: torch pairs saved and current parameters by position and checks no shape: a state saved for a model of another
# width loaded silently, and the next step() failed with a raw "The size of tensor a (8) must match the size of tensor
# b (6)" RuntimeError (for the AdamW baseline after one tensor had already been updated)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_state_saved_for_other_parameters_is_refused_at_load(name):
    state = _stepped_state(name, hidden=8)
    model = _mlp(6)
    opt = make_normalized_optimizer(model, name, lr=1e-2, weight_decay=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(
        ValueError, match=r"load_state_dict: the state of parameter 0 of param group 0 .*shape \(8, 4\)"
    ):
        opt.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the parameters it was saved with load as before
    same = make_normalized_optimizer(_mlp(8), name, lr=1e-2, weight_decay=0.1)
    same.load_state_dict(state)


def test_lion_ar_norms_of_another_layout_are_refused():
    layer = nn.Linear(4, 6)
    opt = LionAR([{"params": [layer.weight], "neuron_dim": 0}], lr=1e-2, weight_decay=0.1)
    layer.weight.grad = torch.randn_like(layer.weight)
    opt.step()
    state = opt.state_dict()
    state["param_groups"][0]["neuron_dim"] = 1  # 6 norms for a layout of 4 neurons
    fresh = LionAR([{"params": [nn.Linear(4, 6).weight], "neuron_dim": 0}], lr=1e-2, weight_decay=0.1)
    with pytest.raises(ValueError, match=r"`norm` with 6 entries.*4 neuron"):
        fresh.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------------------------
# F2: the metrics subtracted / multiplied paired tensors elementwise and torch broadcast mismatched shapes into a
# silently wrong value (l2_update_norm([zeros(3, 3)], [ones(3)]) was 3.0, relative_update_norms 0.0)
# ----------------------------------------------------------------------------------------------------------------------
def test_update_metrics_refuse_tensors_of_different_shapes():
    with pytest.raises(ValueError, match=r"l2_update_norm.*\(3, 3\) and \(3,\)"):
        l2_update_norm([torch.zeros(3, 3)], [torch.ones(3)])
    with pytest.raises(ValueError, match=r"relative_update_norms.*'w'.*\(3, 3\) and \(1, 3\)"):
        relative_update_norms({"w": torch.ones(3, 3)}, {"w": torch.ones(1, 3)})
    with pytest.raises(ValueError, match=r"gradient_momentum_cosine.*\(3, 3\) and \(3,\)"):
        gradient_momentum_cosine([torch.ones(3, 3)], [torch.ones(3)])
    with pytest.raises(ValueError, match=r"relative_representation_change.*\(4, 2\) and \(1, 2\)"):
        relative_representation_change(torch.ones(5, 2), torch.ones(4, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"relative_representation_change.*inputs \(5, 3\)"):
        relative_representation_change(torch.ones(5, 3), torch.ones(4, 2), torch.ones(4, 2))
    # matching shapes keep their values
    assert l2_update_norm([torch.zeros(3, 3)], [torch.ones(3, 3)]) == pytest.approx(3.0)
    assert gradient_momentum_cosine([torch.ones(3)], [torch.ones(3)]) == pytest.approx(1.0)
    assert math.isclose(relative_representation_change(torch.eye(2), torch.eye(2), 2 * torch.eye(2)), 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# F3: the solvers return the step in g's dtype: an integer g came back truncated ((-0.51, -1.02, -1.53) as (0, -1, -1))
# and a list failed with "AttributeError: 'list' object has no attribute 'dim'"
# ----------------------------------------------------------------------------------------------------------------------
def test_cubic_solvers_refuse_non_float_inputs():
    H = torch.eye(3)
    with pytest.raises(ValueError, match=r"`g` of solve_cubic_exact must be a floating-point tensor.*torch.int64"):
        solve_cubic_exact(torch.tensor([1, 2, 3]), H, 1.0)
    with pytest.raises(ValueError, match=r"`g` of solve_cubic_exact .*got list"):
        solve_cubic_exact([1.0, 2.0, 3.0], H, 1.0)
    with pytest.raises(ValueError, match=r"`H` of solve_cubic_exact"):
        solve_cubic_exact(torch.ones(3), torch.eye(3, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match=r"`g` of solve_cubic_lanczos"):
        solve_cubic_lanczos(torch.tensor([1, 2, 3]), lambda v: v, 1.0)
    with pytest.raises(ValueError, match=r"`g` of solve_cubic_gd"):
        solve_cubic_gd(torch.tensor([1, 2, 3]), lambda v: v, 1.0)
    with pytest.raises(TypeError, match=r"`hvp` of solve_cubic_gd"):
        solve_cubic_gd(torch.ones(3), None, 1.0)
    h = solve_cubic_exact(torch.tensor([1.0, 2.0, 3.0]), H, 1.0)
    assert h.dtype == torch.float32 and float(h[0]) < -0.5
