"""Param-group values are checked like the constructor's on every path (constructor groups, `add_param_group`, the
RotationalWrapper's construction through its inner optimizer): a bad value is a `ValueError` naming it when the group
is added, never NaN weights or an error inside `step()` after part of the step was applied."""

import pytest
import torch
from torch import nn

from hf_ext.optim import Lion, LionA, LionAR, RotationalWrapper

NAN = float("nan")


def _weight(seed=0):
    return nn.Parameter(torch.randn(4, 6, generator=torch.Generator().manual_seed(seed)))


def _build(cls, groups, **kw):
    kw = {"lr": 1e-2, "weight_decay": 0.1, **kw}
    if cls in (Lion, LionA):
        kw.pop("weight_decay")
    return cls(groups, **kw)


def _added(cls, group, **kw):
    """`group` given to `add_param_group` of an optimizer built with one valid group."""
    opt = _build(cls, [{"params": [_weight(9)], "neuron_dim": 0}], **kw)
    opt.add_param_group(group)
    return opt


_PATHS = {
    "constructor group": lambda cls, group, **kw: _build(cls, [group], **kw),
    "add_param_group": _added,
}


@pytest.mark.parametrize("path", list(_PATHS))
@pytest.mark.parametrize("cls", [LionA, LionAR])
@pytest.mark.parametrize("snr_beta", [NAN, 1.0, -0.1, True, "0.9"])
def test_group_snr_beta_is_checked_like_the_constructor_argument(path, cls, snr_beta):
    """A group snr_beta of NaN used to turn every weight into NaN (1.0: ZeroDivisionError inside `step()`)."""
    group = {"params": [_weight()], "neuron_dim": 0, "snr_beta": snr_beta}
    with pytest.raises(ValueError, match=r"`snr_beta` of a \w+ param group must be a number in \[0, 1\)"):
        _PATHS[path](cls, group, snr_correction=True)


@pytest.mark.parametrize("path", list(_PATHS))
@pytest.mark.parametrize(
    "inner, key, value",
    [
        ("adamw", "eps", NAN),
        ("adamw", "eps", -1e-8),
        ("adamw", "eps", True),
        ("adamw", "eps", "1e-8"),
        ("sgdm", "dampening", NAN),
        ("sgdm", "dampening", 1.5),
        ("sgdm", "dampening", "0.1"),
        ("sgdm", "momentum", NAN),
        ("sgdm", "momentum", -0.5),
        ("sgdm", "momentum", "0.9"),
    ],
)
def test_rotational_wrapper_checks_the_inner_values_of_every_group(path, inner, key, value):
    """A group eps / dampening of NaN used to make every weight (rotational and plain) NaN, through both paths; a
    constructor group's sgdm momentum used to fail only inside `step()`."""
    group = {"params": [_weight(), nn.Parameter(torch.randn(6))], "neuron_dim": 0, key: value}
    with pytest.raises(ValueError, match=f"`{key}` of a RotationalWrapper param group must be"):
        _PATHS[path](RotationalWrapper, group, inner=inner)


@pytest.mark.parametrize("path", list(_PATHS))
@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
@pytest.mark.parametrize("rotational", ["false", "True", 0, 1])
def test_group_rotational_flag_must_be_a_bool(path, cls, rotational):
    """`rotational="false"` (a YAML/JSON config) used to make the tensor rotational: norms frozen, decay replaced."""
    group = {"params": [_weight()], "neuron_dim": 0, "rotational": rotational}
    with pytest.raises(ValueError, match=r"`rotational` of a \w+ param group must be True or False"):
        _PATHS[path](cls, group)


@pytest.mark.parametrize("path", list(_PATHS))
@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
@pytest.mark.parametrize("neuron_dim", [2, -1, "1", True, 1.5, None])
def test_group_neuron_dim_must_be_0_or_1(path, cls, neuron_dim):
    """2 and -1 used to mean rows, "1", True and 1.5 columns, silently."""
    group = {"params": [_weight()], "neuron_dim": neuron_dim}
    with pytest.raises(ValueError, match=r"`neuron_dim` of a \w+ param group must be 0 \(rows"):
        _PATHS[path](cls, group)


@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
@pytest.mark.parametrize("neuron_dim", [True, 1.0, "0"])
def test_constructor_neuron_dim_must_be_an_int(cls, neuron_dim):
    """`neuron_dim=True` was accepted as 1 (columns)."""
    with pytest.raises(ValueError, match="`neuron_dim` must be 0"):
        cls([_weight()], lr=1e-2, weight_decay=0.1, neuron_dim=neuron_dim)


@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
def test_layout_keys_are_checked_with_a_model_too(cls):
    model = nn.Linear(6, 4)
    with pytest.raises(ValueError, match="`rotational` of a"):
        cls([{"params": [model.weight], "rotational": "false"}], model=model, lr=1e-2, weight_decay=0.1)


@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
def test_column_neurons_of_a_non_2d_rotational_tensor_are_dim_1_neurons(cls):
    """`neuron_dim=1` on a 3+-dim tensor was refused (only 2D `Conv1D` weights had it); since lf43 it means dim 1 is
    the neuron axis (a transposed convolution's `(in, out, *kernel)` weight): every `conv[:, j]` keeps its norm."""
    conv = nn.Parameter(torch.randn(4, 3, 2, 2))
    norms = conv.detach().transpose(0, 1).reshape(3, -1).norm(dim=1)
    for opt in (
        cls([{"params": [conv], "neuron_dim": 1}], lr=1e-2, weight_decay=0.1),
        cls([conv], lr=1e-2, weight_decay=0.1, neuron_dim=1),
    ):
        conv.grad = torch.randn(4, 3, 2, 2)
        opt.step()
        torch.testing.assert_close(conv.detach().transpose(0, 1).reshape(3, -1).norm(dim=1), norms)
    cls([{"params": [conv], "neuron_dim": 1, "per_neuron": False}], lr=1e-2, weight_decay=0.1)  # one norm: no layout


@pytest.mark.parametrize(
    "make",
    [
        lambda g: Lion(g, lr=1e-2),
        lambda g: LionA(g, lr=1e-2, snr_correction=True),
        lambda g: LionAR(g, lr=1e-2, inverse_bias_correction=True),
        lambda g: RotationalWrapper(g, inner="lion", lr=1e-2),
        lambda g: RotationalWrapper(g, inner="adamw", lr=1e-2, fused=False),
    ],
)
@pytest.mark.parametrize("betas", [("0.9", "0.99"), ["0.9", 0.99]])
def test_group_betas_are_stored_as_the_floats_they_were_checked_as(make, betas):
    """String betas used to be accepted and to fail inside `step()`, after the first group's weight had moved."""

    def run(group_betas):
        ps = [_weight(1), _weight(2)]
        opt = make([{"params": [ps[0]], "neuron_dim": 0}, {"params": [ps[1]], "neuron_dim": 0, "betas": group_betas}])
        for s in range(3):
            for i, p in enumerate(ps):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(10 * s + i))
            opt.step()
        return opt, ps

    opt, got = run(betas)
    assert opt.param_groups[1]["betas"] == (0.9, 0.99) and all(type(b) is float for b in opt.param_groups[1]["betas"])
    _, want = run((0.9, 0.99))
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [Lion, LionA, LionAR, RotationalWrapper])
def test_add_param_group_stores_parsed_betas(cls):
    opt = _added(cls, {"params": [_weight()], "neuron_dim": 0, "betas": ("0.8", "0.9")})
    assert opt.param_groups[-1]["betas"] == (0.8, 0.9)


def test_an_angle_the_sgdm_wrapper_cannot_compute_fails_before_any_tensor_changes():
    """momentum 1.0 is a valid SGD momentum, but the equilibrium angle needs one < 1: without an explicit `angle` the
    step refuses it before the plain tensors' inner step and the first group's rotation."""
    first, other = _weight(1), _weight(2)
    bias = nn.Parameter(torch.randn(6))
    opt = RotationalWrapper(
        [{"params": [first, bias], "neuron_dim": 0}, {"params": [other], "neuron_dim": 0, "momentum": 1.0}],
        inner="sgdm",
        lr=1e-2,
        weight_decay=0.1,
    )
    before = [t.detach().clone() for t in (first, bias, other)]
    for t in (first, bias, other):
        t.grad = torch.randn_like(t)
    with pytest.raises(ValueError, match="momentum"):
        opt.step()
    assert all(torch.equal(t, b) for t, b in zip((first, bias, other), before))
    assert all(not s for s in opt.state.values())
