"""Bad-input audit br18, optim: `angular_update`'s `neuron_dim`; numpy scalars in the arguments and optimizers."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from hf_ext.optim import (
    CubicNewtonTrainingArguments,
    Lion,
    LionA,
    LionAR,
    RotationalWrapper,
    WarmupFreeTrainer,
    WarmupFreeTrainingArguments,
    angular_update,
)


@pytest.mark.parametrize("neuron_dim", [-1, 2, "1", None, 1.0000001, True, 1.0])
def test_angular_update_neuron_dim_must_be_0_or_1(neuron_dim):
    """-1, 2, "1", None and 1.0000001 used to return the row angles (as 0) with no error."""
    old, new = torch.randn(4, 6), torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"`neuron_dim` of angular_update must be 0 \(rows are neurons"):
        angular_update(old, new, neuron_dim)


def test_angular_update_columns_of_a_3d_weight_are_dim_1_neurons():
    """A 3D tensor with neuron_dim=1 failed inside `Tensor.t()` without naming the argument, then was refused by
    name; since lf43 dim 1 is its neuron axis (a transposed convolution's `(in, out, *kernel)` weight)."""
    old, new = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert angular_update(old, new, neuron_dim=1).shape == (3,)


def test_angular_update_valid_layouts_unchanged():
    old, new = torch.randn(4, 6), torch.randn(4, 6)
    assert angular_update(old, new, 0).shape == (4,)
    assert angular_update(old, new, 1).shape == (6,)
    assert torch.equal(angular_update(old, new, 1), angular_update(old.t(), new.t(), 0))


# -- numpy scalars (br18 #3): accepted as the documented type and stored as the Python one ------------------------------
@pytest.mark.parametrize(
    "name, value, python_type",
    [
        ("lion_beta1", np.float32(0.9), float),
        ("lion_beta2", np.float64(0.95), float),
        ("cooldown_fraction", np.float32(0.25), float),
        ("sgd_momentum", np.float32(0.9), float),
        ("rotation_angle", np.float32(0.01), float),
        ("update_norm_decay", np.float32(0.5), float),
        ("nesterov", np.True_, bool),
        ("per_neuron", np.False_, bool),
        ("zero_mean", np.True_, bool),
        ("inverse_bias_correction", np.False_, bool),
        ("snr_correction", np.True_, bool),
        ("learning_rate", np.float32(1e-3), float),
        ("weight_decay", np.float32(0.1), float),
    ],
)
def test_warmup_free_arguments_store_python_values(tmp_path, name, value, python_type):
    """Accepted but stored as numpy: to_json_string() (logged by the TensorBoard callback) then failed."""
    args = WarmupFreeTrainingArguments(output_dir=str(tmp_path), report_to="none", **{name: value})
    assert type(getattr(args, name)) is python_type
    assert json.loads(args.to_json_string())[name] == pytest.approx(float(value))


@pytest.mark.parametrize(
    "name, value, python_type",
    [
        ("cubic_M", np.float32(10.0), float),
        ("cubic_alpha", np.float32(0.1), float),
        ("cubic_beta_power", np.float64(0.0), float),
        ("cubic_max_extrapolation", np.float32(10.0), float),
        ("cubic_hessian_window", np.int64(3), int),
        ("cubic_krylov_dim", np.int64(10), int),
        ("cubic_gd_iters", np.int32(50), int),
        ("cubic_max_step_norm", np.float32(1.0), float),
    ],
)
def test_cubic_newton_arguments_store_python_values(tmp_path, name, value, python_type):
    args = CubicNewtonTrainingArguments(output_dir=str(tmp_path), report_to="none", **{name: value})
    assert type(getattr(args, name)) is python_type
    assert json.loads(args.to_json_string())[name] == pytest.approx(float(value))


@pytest.mark.parametrize(
    "switch", ["nesterov", "inverse_bias_correction", "snr_correction", "zero_mean", "per_neuron"]
)
def test_warmup_free_trainer_takes_numpy_bool_switches(tmp_path, switch):
    """WarmupFreeTrainer refused `nesterov=np.True_` ("must be True or False") although the arguments accepted it."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    args = WarmupFreeTrainingArguments(output_dir=str(tmp_path), report_to="none", weight_decay=0.1)
    setattr(args, switch, np.True_)  # as a hyperparameter search sets it, after __post_init__
    optimizer = WarmupFreeTrainer(model=model, args=args).create_optimizer()
    assert all(type(g[switch]) is bool for g in optimizer.param_groups if switch in g)


@pytest.mark.parametrize("cls", [Lion, LionA, LionAR, RotationalWrapper])
def test_normalized_optimizers_take_numpy_bool_switches(cls):
    weight = nn.Parameter(torch.randn(4, 6))
    switches = {
        Lion: {"nesterov": np.True_},
        LionA: {"nesterov": np.True_, "snr_correction": np.False_, "inverse_bias_correction": np.True_},
        LionAR: {"nesterov": np.True_, "zero_mean": np.False_, "per_neuron": np.True_},
        RotationalWrapper: {"zero_mean": np.False_, "per_neuron": np.True_},
    }[cls]
    layout = {"neuron_dim": 0} if cls in (LionAR, RotationalWrapper) else {}
    optimizer = cls([weight], lr=1e-2, weight_decay=0.1, **layout, **switches)
    group = optimizer.param_groups[0]
    assert {k: type(group[k]) for k in switches} == dict.fromkeys(switches, bool)
    optimizer.add_param_group({"params": [nn.Parameter(torch.randn(3))], "rotational": np.False_, **switches})
    assert all(type(g[k]) is bool for g in optimizer.param_groups for k in switches)
    weight.grad = torch.randn_like(weight)
    optimizer.step()


@pytest.mark.parametrize("value", ["false", 1, None])
def test_normalized_optimizers_still_refuse_non_bool_switches(value):
    with pytest.raises(ValueError, match="`nesterov` of a LionAR param group must be True or False"):
        LionAR([nn.Parameter(torch.randn(4, 6))], lr=1e-2, weight_decay=0.1, neuron_dim=0, nesterov=value)


@pytest.mark.parametrize("value", [None, "10", True])
def test_cubic_M_must_be_a_number(tmp_path, value):
    """cubic_M=None / '10' failed with "'>' not supported between instances of ..."."""
    with pytest.raises(ValueError, match="--cubic_M must be a number > 0"):
        CubicNewtonTrainingArguments(output_dir=str(tmp_path), report_to="none", cubic_M=value)
