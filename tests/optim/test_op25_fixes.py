"""op25 audit fixes: the normalized optimizers take numpy numbers (F1); WarmupFreeTrainer's default arguments work (F2)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from hf_ext.optim import (
    Lion,
    LionA,
    LionAR,
    RotationalWrapper,
    equilibrium_angle,
    make_normalized_optimizer,
    rotational_param_groups,
)

# ----------------------------------------------------------------------------------------------------------------------
# F1: numpy numbers (np.float32 from a sweep grid, np.int64) were refused as "not a positive finite number"
# ----------------------------------------------------------------------------------------------------------------------
# Python values that np.float32 holds exactly, so the numpy run and the Python run must agree bit for bit; the np.int64
# values are integers inside each argument's range
FLOATS = {
    "lr": 2.0**-7,
    "weight_decay": 0.5,
    "angle": 2.0**-6,
    "update_norm_decay": 0.75,
    "snr_beta": 0.875,
    "eps": 2.0**-20,
    "momentum": 0.875,
    "dampening": 0.25,
}
INTS = {
    "lr": 1,
    "weight_decay": 1,
    "angle": 1,
    "update_norm_decay": 0,
    "snr_beta": 0,
    "eps": 1,
    "momentum": 1,  # with an explicit angle (the equilibrium angle needs momentum < 1): see EXTRA
    "dampening": 0,
}
EXTRA = {("RotationalWrapper sgdm", "momentum", "int64"): {"angle": 0.01}}
NUMPY_TYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64}

# (name, constructor of the optimizer over a model, its numeric arguments)
BUILDERS = {
    "Lion": (lambda m, **kw: Lion(m, **{"lr": 0.01, **kw}), ("lr", "weight_decay")),
    "LionA": (
        lambda m, **kw: LionA(m, **{"lr": 0.01, "weight_decay": 0.1, "snr_correction": True, **kw}),
        ("lr", "weight_decay", "snr_beta"),
    ),
    "LionAR": (
        lambda m, **kw: LionAR(
            m, **{"lr": 0.01, "update_norm_decay": 0.5, "snr_correction": True, "nesterov": True, **kw}
        ),
        ("lr", "weight_decay", "angle", "update_norm_decay", "snr_beta"),
    ),
    "RotationalWrapper adamw": (
        lambda m, **kw: RotationalWrapper(m, **{"inner": "adamw", **kw}),
        ("lr", "weight_decay", "angle", "update_norm_decay", "eps"),
    ),
    "RotationalWrapper lion": (
        lambda m, **kw: RotationalWrapper(m, **{"inner": "lion", "lr": 0.01, "weight_decay": 0.1, **kw}),
        ("lr", "weight_decay", "angle", "update_norm_decay"),
    ),
    "RotationalWrapper sgdm": (
        lambda m, **kw: RotationalWrapper(m, **{"inner": "sgdm", "weight_decay": 0.1, **kw}),
        ("lr", "weight_decay", "angle", "momentum", "dampening"),
    ),
}
for _name in ("adamw", "lion", "lion_a", "lion_ar", "rotational_adamw", "rotational_lion", "rotational_sgdm"):
    BUILDERS[f"make_normalized_optimizer {_name}"] = (
        lambda m, _name=_name, **kw: make_normalized_optimizer(m, _name, **{"lr": 0.01, "weight_decay": 0.1, **kw}),
        ("lr", "weight_decay"),
    )

CASES = [
    pytest.param(builder, arg, kind, id=f"{builder}-{arg}-{kind}")
    for builder, (_, args) in BUILDERS.items()
    for arg in args
    for kind in NUMPY_TYPES
]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _run(builder: str, **kw) -> tuple[list[torch.Tensor], list[dict]]:
    model = _model()
    optimizer = BUILDERS[builder][0](model, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], optimizer.state_dict()["param_groups"]


def _python_value(value):
    return int(value) if isinstance(value, np.integer) else float(value)


@pytest.mark.parametrize("builder, arg, kind", CASES)
def test_numpy_numbers_are_taken_as_the_python_number(builder, arg, kind):
    """`lr=np.float32(...)` (and every other numeric argument) used to raise "`lr` must be a positive finite number";
    now it is accepted, gives the same steps as the Python number and is stored as a Python number."""
    value = NUMPY_TYPES[kind]((INTS if kind == "int64" else FLOATS)[arg])
    extra = EXTRA.get((builder, arg, kind), {})
    expected_params, expected_groups = _run(builder, **extra, **{arg: _python_value(value)})
    params, groups = _run(builder, **extra, **{arg: value})
    for p, q in zip(params, expected_params):
        assert torch.equal(p, q)
    assert groups == expected_groups
    for group in groups:
        for key, v in group.items():
            assert not isinstance(v, np.generic), (key, v)  # Python values only: the saved groups are JSON
            if isinstance(v, tuple):
                assert not any(isinstance(x, np.generic) for x in v), (key, v)
    json.dumps(groups)


@pytest.mark.parametrize("cls", [Lion, LionA, LionAR, RotationalWrapper])
def test_numpy_numbers_in_a_param_group_are_stored_as_python_numbers(cls):
    model = _model()
    weight, bias = model[0].weight, model[0].bias
    groups = [
        {"params": [weight], "lr": np.float32(0.25), "weight_decay": np.float64(0.5), "neuron_dim": 0},
        {"params": [bias], "lr": np.float32(0.5), "weight_decay": np.int64(0), "rotational": False},
    ]
    optimizer = cls(groups, lr=0.01, weight_decay=0.5)
    optimizer.add_param_group({"params": [model[2].bias], "lr": np.float32(0.125), "rotational": False})
    stored = [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
    assert stored[:2] == [(0.25, 0.5), (0.5, 0)] and stored[2][0] == 0.125
    for lr, wd in stored:
        assert type(lr) is float and type(wd) in (int, float), (lr, wd)
    json.dumps(optimizer.state_dict()["param_groups"])


def test_rotational_param_groups_store_a_python_weight_decay():
    groups = rotational_param_groups(_model(), np.float32(0.5))
    assert [type(g["weight_decay"]) for g in groups] == [float, float]
    assert groups[0]["weight_decay"] == 0.5


@pytest.mark.parametrize("kind", ["adamw", "lion", "sgdm"])
def test_equilibrium_angle_takes_numpy_numbers_in_python_precision(kind):
    """`equilibrium_angle("adamw", np.float32(1e-4), 0.1)` was refused; the angle is computed in Python floats (numpy 2
    would keep `2 * np.float32 * 0.1` in float32)."""
    lr = np.float32(1e-4)
    got = equilibrium_angle(kind, lr, np.float64(0.1), momentum=np.float32(0.875))
    assert got == equilibrium_angle(kind, float(lr), 0.1, momentum=0.875)
    assert type(got) is float
    assert equilibrium_angle(kind, np.int64(1), np.int64(1)) == equilibrium_angle(kind, 1, 1)


@pytest.mark.parametrize("value", [True, np.True_, "0.01", None])
def test_bools_and_strings_stay_refused(value):
    with pytest.raises(ValueError, match="`lr`"):
        LionAR(_model(), lr=value, weight_decay=0.1)
    with pytest.raises(ValueError, match="`weight_decay`"):
        Lion(_model(), lr=0.01, weight_decay=value)
    if value is not None:  # angle=None is the equilibrium angle
        with pytest.raises(ValueError, match="`angle`"):
            RotationalWrapper(_model(), angle=value)
    with pytest.raises(ValueError, match="`momentum`"):
        RotationalWrapper(_model(), inner="sgdm", momentum=value)


# ----------------------------------------------------------------------------------------------------------------------
# F2: WarmupFreeTrainer's default arguments were refused ("LionAR needs weight_decay > 0") although the docs said they
# work: WarmupFreeTrainingArguments kept transformers' weight_decay=0, which gives lion_ar no rotation angle
# ----------------------------------------------------------------------------------------------------------------------
class _TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(16, 8)
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 16)

    def forward(self, input_ids, labels=None):
        logits = self.out(torch.tanh(self.hidden(self.emb(input_ids))))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return {"loss": loss, "logits": logits}


def _data():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": (ids := torch.randint(0, 16, (8,), generator=g)), "labels": ids} for _ in range(4)]


def _common(tmp_path):
    return dict(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", max_steps=2, save_strategy="no")


def test_warmup_free_trainer_trains_with_the_default_arguments(tmp_path):
    """`WarmupFreeTrainingArguments(output_dir=...)` was refused at construction ("LionAR needs `weight_decay > 0`")."""
    from hf_ext.optim import WarmupFreeTrainer, WarmupFreeTrainingArguments

    args = WarmupFreeTrainingArguments(**_common(tmp_path))
    assert args.normalized_optimizer == "lion_ar" and args.rotation_angle is None and args.weight_decay == 1.0
    model = _TinyLM()
    before = model.hidden.weight.detach().clone()
    trainer = WarmupFreeTrainer(model=model, args=args, train_dataset=_data())
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    assert isinstance(optimizer, LionAR)
    (rotational,) = [g for g in optimizer.param_groups if g["rotational"]]
    assert rotational["weight_decay"] == 1.0
    assert optimizer.group_angle(rotational) == equilibrium_angle("lion", args.learning_rate, 1.0, (0.98, 0.98))
    assert not torch.equal(model.hidden.weight, before)  # it rotated
    json.dumps(optimizer.state_dict()["param_groups"])


@pytest.mark.parametrize(
    "kw, weight_decay",
    [
        ({}, 1.0),  # lion_ar, the default optimizer
        (dict(normalized_optimizer="rotational_lion"), 1.0),
        (dict(normalized_optimizer="rotational_adamw"), 0.01),
        (dict(normalized_optimizer="rotational_sgdm"), 0.01),
        # the others need no weight decay: transformers' default, as before
        (dict(normalized_optimizer="adamw"), 0.0),
        (dict(normalized_optimizer="lion"), 0.0),
        (dict(normalized_optimizer="lion_a"), 0.0),
        (dict(rotation_angle=0.01), 0.0),  # an explicit angle needs no weight decay
        (dict(normalized_optimizer="rotational_adamw", rotation_angle=0.01), 0.0),
        # given values are kept
        (dict(weight_decay=0.25), 0.25),
        (dict(normalized_optimizer="adamw", weight_decay=0.1), 0.1),
        (dict(weight_decay=np.float32(0.5)), 0.5),
    ],
)
def test_weight_decay_default_is_what_the_optimizer_needs(tmp_path, kw, weight_decay):
    from transformers import HfArgumentParser

    from hf_ext.optim import WarmupFreeTrainer, WarmupFreeTrainingArguments

    args = WarmupFreeTrainingArguments(**_common(tmp_path), **kw)
    assert args.weight_decay == weight_decay and type(args.weight_decay) is float
    WarmupFreeTrainer(model=_TinyLM(), args=args, train_dataset=_data())  # builds
    argv = ["--output_dir", str(tmp_path / "o"), "--report_to", "none"]
    for key, value in kw.items():
        argv += [f"--{key}", str(value)]
    (parsed,) = HfArgumentParser(WarmupFreeTrainingArguments).parse_args_into_dataclasses(argv)
    assert parsed.weight_decay == weight_decay


def test_an_explicit_zero_weight_decay_without_an_angle_is_refused_naming_both_fixes(tmp_path):
    from hf_ext.optim import WarmupFreeTrainer, WarmupFreeTrainingArguments

    for name in ("lion_ar", "rotational_adamw"):
        args = WarmupFreeTrainingArguments(**_common(tmp_path), normalized_optimizer=name, weight_decay=0.0)
        with pytest.raises(ValueError, match=rf"--normalized_optimizer {name} .*--weight_decay > 0.*--rotation_angle"):
            WarmupFreeTrainer(model=_TinyLM(), args=args, train_dataset=_data())


def test_plain_training_arguments_need_a_weight_decay_and_say_so(tmp_path):
    """Plain `TrainingArguments` (weight_decay 0, no rotation angle) are refused with the flag to set; with a weight
    decay they train, as the docs say."""
    from transformers import TrainingArguments

    from hf_ext.optim import WarmupFreeTrainer

    with pytest.raises(ValueError, match=r"plain TrainingArguments.*--weight_decay 1\.0.*--rotation_angle"):
        WarmupFreeTrainer(model=_TinyLM(), args=TrainingArguments(**_common(tmp_path)), train_dataset=_data())
    args = TrainingArguments(**_common(tmp_path), weight_decay=1.0)
    trainer = WarmupFreeTrainer(model=_TinyLM(), args=args, train_dataset=_data())
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    assert isinstance(optimizer, LionAR)
    assert {g["betas"] for g in optimizer.param_groups} == {(0.98, 0.98)}  # the recipe defaults


def test_the_warmup_recipe_keeps_its_own_weight_decay_default():
    from hf_ext.recipes.warmup import WarmupTrainingArguments

    assert WarmupTrainingArguments().weight_decay == 0.1
    assert WarmupTrainingArguments(normalized_optimizer="adamw").weight_decay == 0.1
