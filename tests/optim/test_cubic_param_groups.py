"""CubicNewton param-group values are checked like its constructor arguments (cn33 F1) and stored as Python numbers (F2)."""

import pytest
import torch

from hf_ext.optim import CubicNewton


def _f(x):
    return (x**2).sum() + x.sum()


def _param(n=4):
    return torch.nn.Parameter(torch.ones(n, dtype=torch.float64))


@pytest.mark.parametrize(
    "group, match",
    [
        ({"momentum": "hessian-corrected"}, "`momentum` must be one of"),  # used to run as "ema"
        ({"alpha": 5.0}, "`alpha` must lie in"),
        ({"M": -1.0}, "`M` must be a positive"),
        ({"lr": float("nan")}, "`lr` must be a positive"),
        ({"M_rule": "adaptive"}, "M_rule='adaptive' needs momentum='none'"),
        ({"solver": "exact", "hessian": "fresh"}, "solver='exact' needs hessian='dense'"),  # AttributeError in step
        ({"hessian_window": 0}, "`hessian_window` must be a positive int"),
        ({"krylov_dim": True}, "`krylov_dim` must be a positive int"),
    ],
)
def test_group_values_are_checked_like_the_constructor_arguments(group, match):
    with pytest.raises(ValueError, match=match) as err:
        CubicNewton([{"params": [_param()], **group}])
    assert "param group" in str(err.value)


@pytest.mark.parametrize("weight_decay", [0.1, 1e-4, float("nan"), "0.1"])
def test_group_weight_decay_that_would_be_ignored_is_refused(weight_decay):
    with pytest.raises(ValueError, match="weight_decay=.*no weight decay"):
        CubicNewton([{"params": [_param()], "weight_decay": weight_decay}])


def test_group_hessian_dense_is_held_to_dense_max_dim():
    with pytest.raises(ValueError, match="dense_max_dim=4"):
        CubicNewton([{"params": [_param(8)], "hessian": "dense"}], hessian="fresh", dense_max_dim=4)


def test_valid_group_values_are_used_as_constructor_arguments_would_be():
    a, b = _param(), _param()
    by_group = CubicNewton([{"params": [a], "momentum": "none", "M": 3.0, "weight_decay": 0.0, "name": "all"}])
    by_kwargs = CubicNewton([b], momentum="none", M=3.0)
    for _ in range(3):
        by_group.step(lambda: _f)
        by_kwargs.step(lambda: _f)
    assert by_group.param_groups[0]["momentum"] == "none" and by_group.param_groups[0]["name"] == "all"
    assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["keywords", "group"])
def test_numpy_numbers_are_stored_as_python_numbers_so_checkpoints_load(path, tmp_path):
    """A numpy number (a sweep over np.linspace) stayed a numpy scalar in the param group: torch.load's default
    weights_only=True refused the saved state, and the safetensors + JSON writer raised a TypeError (cn33 F2)."""
    import io

    import numpy as np

    from hf_ext.optim.serialization import load_optimizer_state, save_optimizer_state

    options = dict(alpha=np.float64(0.1), lr=np.float32(0.5), krylov_dim=np.int64(3), M=np.float32(2.0))
    p = _param()
    if path == "keywords":
        opt = CubicNewton([p], hessian="fresh", **options)
    else:
        opt = CubicNewton([{"params": [p], **options}], hessian="fresh")
    opt.step(lambda: _f)
    group = opt.param_groups[0]
    assert [type(group[k]) for k in ("alpha", "lr", "krylov_dim", "M")] == [float, float, int, float]
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    CubicNewton([_param()], hessian="fresh").load_state_dict(torch.load(buf))
    save_optimizer_state(opt, str(tmp_path))
    load_optimizer_state(CubicNewton([_param()], hessian="fresh"), str(tmp_path))
