"""sm53: values set after construction (schedulers, `param_groups`, `load_state_dict`) checked at LionAR's step;
transformers' schedules drive its rotation angle; CubicNewtonTrainer's running-statistics warning."""

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from hf_ext.optim import LionAR, RotationalWrapper


def _lion_ar(angle=0.2, **kwargs):
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4)
    opt = LionAR(lin.parameters(), model=lin, lr=1e-3, weight_decay=1.0, angle=angle, per_neuron=True, **kwargs)
    return lin, opt


def _backward(lin, seed):
    torch.manual_seed(seed)
    lin.zero_grad()
    lin(torch.randn(5, 6)).pow(2).sum().backward()


@pytest.mark.parametrize("make", [get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup])
def test_a_transformers_schedule_drives_the_rotation_angle(make):
    """Every neuron turns by `angle * lr_t / lr_0` at each step, the factor the schedule set (warmup, decay, 0)."""
    lin, opt = _lion_ar(zero_mean=False)
    sched = make(opt, num_warmup_steps=3, num_training_steps=8)
    for t in range(8):
        _backward(lin, t)
        factor = opt.param_groups[0]["lr"] / 1e-3
        before = lin.weight.detach().clone()
        opt.step()
        sched.step()
        turned = torch.nn.functional.cosine_similarity(before.double(), lin.weight.detach().double(), dim=1)
        expected = 0.2 * factor
        assert torch.allclose(turned.clamp(-1, 1).acos(), torch.full((4,), expected, dtype=torch.float64), atol=1e-3)


def _bad(opt, key, value):
    opt.param_groups[0][key] = value


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("angle", 3.0, r"`angle` of a LionAR param group must be in \(0, pi/2\)"),
        ("angle", -0.5, r"`angle` of a LionAR param group must be in"),
        ("angle", float("nan"), r"`angle` of a LionAR param group must be in"),
        ("lr", float("nan"), r"`lr` of a LionAR param group is nan at this step"),
        ("lr", -1e-3, r"`lr` of a LionAR param group is -0\.001 at this step"),
        ("lr", 0.02, r"rotation angle of a LionAR param group at this step is 4 rad .*more than pi/2"),
        ("base_lr", 0.0, r"`base_lr` of a LionAR param group is 0\.0"),
    ],
)
def test_a_value_set_after_construction_is_refused_at_the_step_and_changes_nothing(key, value, match):
    """They used to step: angle 3 turned the neurons by ~2.7 rad, a NaN angle or lr made the weights NaN, a negative
    one skipped the rotation silently, a lr 20x the base turned by 4 rad, and base_lr 0 raised ZeroDivisionError."""
    lin, opt = _lion_ar()
    _backward(lin, 0)
    before = [p.detach().clone() for p in lin.parameters()]
    _bad(opt, key, value)
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))
    assert not opt.state


def test_an_angle_loaded_with_a_state_dict_is_checked_at_the_step():
    lin, opt = _lion_ar()
    state = opt.state_dict()
    state["param_groups"][0]["angle"] = 2.5
    opt.load_state_dict(state)
    _backward(lin, 0)
    with pytest.raises(ValueError, match=r"`angle` of a LionAR param group must be in .*got 2\.5"):
        opt.step()


def test_an_lr_of_zero_at_the_end_of_a_decay_still_steps_without_turning():
    lin, opt = _lion_ar()
    opt.param_groups[0]["lr"] = 0.0
    _backward(lin, 0)
    before = lin.weight.detach().clone()
    opt.step()
    assert torch.allclose(before.norm(dim=1), lin.weight.detach().norm(dim=1), atol=1e-6)
    assert torch.isfinite(lin.weight).all()


def test_rotational_wrapper_refuses_a_nan_lr_at_the_step():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4)
    opt = RotationalWrapper(lin.parameters(), inner="adamw", lr=1e-3, weight_decay=0.1)
    opt.param_groups[0]["lr"] = float("nan")
    _backward(lin, 0)
    before = lin.weight.detach().clone()
    with pytest.raises(ValueError, match=r"`lr` of a RotationalWrapper param group is nan at this step"):
        opt.step()
    assert torch.equal(before, lin.weight)


def _norm_net(norm):
    from .test_cn52_fixes import _NormNet

    return _NormNet(norm)


def _cubic_args(tmp_path):
    from hf_ext.optim import CubicNewtonTrainingArguments

    return CubicNewtonTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1, cubic_krylov_dim=3, save_strategy="no"
    )


@pytest.mark.parametrize("trained", ["num_batches_tracked", "statistics_only"])
def test_no_running_statistics_warning_for_trained_statistics(tmp_path, trained, recwarn):
    """Trained statistics stay frozen at their values, the fine-tuning the docs recommend: it used to warn too (that
    the layer "does not normalise"). A checkpoint saved without `num_batches_tracked` counts by its statistics."""
    from hf_ext.optim import CubicNewtonTrainer

    norm = torch.nn.BatchNorm1d(4)
    norm.running_mean.fill_(0.5)
    norm.running_var.fill_(2.0)
    norm.num_batches_tracked.fill_(7 if trained == "num_batches_tracked" else 0)
    CubicNewtonTrainer(model=_norm_net(norm), args=_cubic_args(tmp_path))
    assert not [w for w in recwarn if "running statistics" in str(w.message)]


def test_the_running_statistics_warning_names_fresh_layers_only_and_the_users_line(tmp_path):
    """Also when a subclass of the trainer inside hf_ext constructs it (simulated: a subclass compiled under a file name
    in the package), the warning names the line outside hf_ext; it named the subclass's `super().__init__` line."""
    import os

    import hf_ext
    from hf_ext.optim import CubicNewtonTrainer

    trained = torch.nn.BatchNorm1d(4)
    trained.num_batches_tracked.fill_(3)
    model = torch.nn.Sequential()
    model.add_module("fresh", _norm_net(torch.nn.BatchNorm1d(4)))
    model.add_module("trained", trained)
    source = "class Sub(CubicNewtonTrainer):\n    def __init__(self, **kw):\n        super().__init__(**kw)\n"
    namespace = {"CubicNewtonTrainer": CubicNewtonTrainer}
    exec(compile(source, os.path.join(os.path.dirname(hf_ext.__file__), "_sm53_sub.py"), "exec"), namespace)
    with pytest.warns(UserWarning, match=r"1 normalisation layers with running statistics \(fresh\.norm\)") as got:
        namespace["Sub"](model=model, args=_cubic_args(tmp_path))
    [warning] = [w for w in got if "running statistics" in str(w.message)]
    assert warning.filename == __file__
