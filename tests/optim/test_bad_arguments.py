"""Bad optimizer arguments are refused at construction, naming the argument (not at `train()`, not as NaN weights), and
options that belong to another optimizer are refused or reported instead of being silently ignored."""

import logging

import pytest
import torch
from transformers import TrainingArguments

from hf_ext.optim import (
    CubicNewtonTrainer,
    CubicNewtonTrainingArguments,
    LionA,
    LionAR,
    RotationalWrapper,
    WarmupFreeTrainer,
    WarmupFreeTrainingArguments,
)

NAN, INF = float("nan"), float("inf")


def _linear():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def _warmup_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", learning_rate=1e-3, weight_decay=1.0)
    return WarmupFreeTrainingArguments(**{**base, **kw})


def _cubic_args(tmp_path, **kw):
    return CubicNewtonTrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", **kw)


@pytest.mark.parametrize("momentum", [NAN, INF, 0.0, -0.5])
def test_rotational_sgdm_refuses_a_non_finite_or_non_positive_momentum(momentum):
    """NaN/inf momentum used to be accepted and turned every weight into NaN on the first steps."""
    with pytest.raises(ValueError, match="momentum"):
        RotationalWrapper(_linear(), inner="sgdm", momentum=momentum)


@pytest.mark.parametrize("betas", [(0.9,), (1.0, 0.9), (NAN, 0.9), ("a", 0.9)])
def test_rotational_wrapper_checks_inner_betas_by_name(betas):
    """`(0.9,)` used to end in an IndexError inside torch's AdamW."""
    with pytest.raises(ValueError, match="`betas`"):
        RotationalWrapper(_linear(), inner="adamw", betas=betas)


@pytest.mark.parametrize("betas", [("a", 0.9), (None, 0.9)])
def test_non_numeric_betas_are_named(betas):
    with pytest.raises(ValueError, match="`betas`"):
        LionA(_linear().parameters(), betas=betas)


def test_valid_edge_values_stay_valid():
    RotationalWrapper(_linear(), inner="sgdm", momentum=1.0)
    RotationalWrapper(_linear(), inner="adamw", betas=(0.0, 0.0))
    LionA(_linear().parameters(), betas=(0.0, 0.5), weight_decay=0)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(learning_rate=0.0), "--learning_rate"),
        (dict(learning_rate=-1e-3), "--learning_rate"),
        (dict(learning_rate=NAN), "--learning_rate"),
        (dict(learning_rate=INF), "--learning_rate"),
        (dict(weight_decay=-1.0), "--weight_decay"),
        (dict(weight_decay=NAN), "--weight_decay"),
        (dict(weight_decay=INF), "--weight_decay"),
        (dict(sgd_momentum=0.0, normalized_optimizer="rotational_sgdm"), "--sgd_momentum"),
        (dict(sgd_momentum=NAN, normalized_optimizer="rotational_sgdm"), "--sgd_momentum"),
        (dict(sgd_momentum=INF, normalized_optimizer="rotational_sgdm"), "--sgd_momentum"),
        # a bool is an int: True was a whole-run cooldown, and lr 1.0 for normalized_optimizer="adamw"
        (dict(cooldown_fraction=True), "--cooldown_fraction"),
        (dict(learning_rate=True, normalized_optimizer="adamw"), "--learning_rate"),
        (dict(weight_decay=True), "--weight_decay"),
        (dict(lion_beta1=False), "--lion_beta1"),
        (dict(update_norm_decay=False), "--update_norm_decay"),
        (dict(rotation_angle=True), "--rotation_angle"),
        (dict(sgd_momentum=True, normalized_optimizer="rotational_sgdm"), "--sgd_momentum"),
        (dict(optim_args="betas=(0.5,0.6)"), "--optim_args"),
        (dict(optim_target_modules=["attn"]), "--optim_target_modules"),
    ],
)
def test_warmup_free_arguments_refuse_bad_values_when_created(tmp_path, kw, match):
    """They used to be accepted and to fail only when `train()` built the optimizer (or to be silently ignored)."""
    with pytest.raises(ValueError, match=match):
        _warmup_args(tmp_path, **kw)


def _data():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": (ids := torch.randint(0, 16, (8,), generator=g)), "labels": ids} for _ in range(4)]


class _TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)
        self.out = torch.nn.Linear(8, 16)

    def forward(self, input_ids, labels=None):
        logits = self.out(self.emb(input_ids))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return {"loss": loss, "logits": logits}


@pytest.mark.parametrize(
    "kw",
    [
        dict(weight_decay=0.0),  # lion_ar (the default) with neither a weight decay nor a rotation angle
        dict(weight_decay=0.0, normalized_optimizer="rotational_adamw"),
        dict(normalized_optimizer="rotational_adamw", adam_beta2=1.0),
    ],
)
def test_warmup_free_trainer_refuses_an_unbuildable_optimizer_at_construction(tmp_path, kw):
    """lion_ar with weight_decay=0 and no angle (the defaults, before WarmupFreeTrainingArguments got a weight decay
    default) used to pass and fail only inside `train()`."""
    with pytest.raises(ValueError, match="--weight_decay|--adam_beta"):
        WarmupFreeTrainer(model=_TinyLM(), args=_warmup_args(tmp_path, **kw), train_dataset=_data())


def test_warmup_free_trainer_with_plain_training_arguments_checks_them_too(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")  # weight_decay=0
    with pytest.raises(ValueError, match="--weight_decay"):
        WarmupFreeTrainer(model=_TinyLM(), args=args, train_dataset=_data())
    args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", optim_args="x=1")
    with pytest.raises(ValueError, match="--optim_args"):
        WarmupFreeTrainer(model=_TinyLM(), args=args, train_dataset=_data())


@pytest.mark.parametrize(
    "kw, ignored",
    [
        (dict(adam_beta2=0.95), "adam_beta2"),
        (dict(normalized_optimizer="rotational_adamw", lion_beta1=0.9), "lion_beta1"),
        (dict(sgd_momentum=0.5), "sgd_momentum"),
    ],
)
def test_options_of_another_optimizer_are_reported(tmp_path, caplog, kw, ignored):
    """`adam_beta2` with lion_ar (and the like) used to be ignored without a word."""
    with caplog.at_level(logging.WARNING, logger="hf_ext.optim.warmup_trainer"):
        WarmupFreeTrainer(model=_TinyLM(), args=_warmup_args(tmp_path, **kw), train_dataset=_data())
    assert any(f"--{ignored}" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


def test_options_the_optimizer_reads_are_not_reported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_ext.optim.warmup_trainer"):
        WarmupFreeTrainer(model=_TinyLM(), args=_warmup_args(tmp_path, lion_beta1=0.9), train_dataset=_data())
        WarmupFreeTrainer(
            model=_TinyLM(),
            args=_warmup_args(tmp_path, normalized_optimizer="adamw", adam_beta2=0.95, weight_decay=0.0),
            train_dataset=_data(),
        )
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(optim="adafactor"), "--optim adafactor"),
        (dict(optim_args="betas=(0.5,0.6)"), "--optim_args"),
        (dict(optim_target_modules=["attn"]), "--optim_target_modules"),
        (dict(weight_decay=0.1), "--weight_decay"),
    ],
)
def test_cubic_newton_arguments_refuse_options_they_would_ignore(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _cubic_args(tmp_path, **kw)


def test_cubic_newton_trainer_refuses_optimizer_cls_and_kwargs(tmp_path):
    with pytest.raises(ValueError, match="optimizer_cls_and_kwargs"):
        CubicNewtonTrainer(
            model=_TinyLM(),
            args=_cubic_args(tmp_path),
            train_dataset=_data(),
            optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}),
        )


def _params():
    return [torch.nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))]


@pytest.mark.parametrize(
    "build, match",
    [
        # a bool is an int: True acted as lr 1.0, weight decay 1.0, a 1-radian rotation per step
        (lambda: LionAR(_params(), lr=True), "`lr` must"),
        (lambda: LionA(_params(), weight_decay=True), "`weight_decay` must"),
        (lambda: LionAR(_params(), angle=True), "`angle` must"),
        (lambda: RotationalWrapper(_params(), lr=True, weight_decay=0.1), "`lr` must"),
        # were a bare TypeError comparing float and str
        (lambda: LionA(_params(), snr_beta="0.9"), "`snr_beta` must be a number in"),
        (
            lambda: LionAR(_params(), weight_decay=0.1, update_norm_decay="0.5"),
            "`update_norm_decay` must be a number in",
        ),
        (lambda: RotationalWrapper(_params(), weight_decay=0.1, update_norm_decay=True), "`update_norm_decay` must"),
        # NaN dampening turned the SGD momentum buffer into NaN
        (lambda: RotationalWrapper(_params(), inner="sgdm", weight_decay=0.1, dampening=NAN), "`dampening` must"),
    ],
)
def test_normalized_optimizers_refuse_bools_strings_and_nan_by_name(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="adamw", betas=(NAN, 0.9)), "`betas` of equilibrium_angle"),  # returned nan
        (dict(kind="lion", betas=(1.2, 0.9)), "`betas` of equilibrium_angle"),  # returned a number
        (dict(kind="sgdm", momentum=-1.0), "`momentum` of equilibrium_angle"),  # ZeroDivisionError
        (dict(kind="adamw", lr=True), "lr > 0"),
    ],
)
def test_equilibrium_angle_refuses_bad_coefficients(kwargs, match):
    from hf_ext.optim import equilibrium_angle

    args = {"lr": 1e-3, "weight_decay": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        equilibrium_angle(**args)
