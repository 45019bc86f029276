"""Trainer integration of the normalized optimizers: `WarmupFreeTrainer`, its arguments, and a Trainer optimizer
factory (`normalized_optimizer`) for the stock `transformers.Trainer`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import SchedulerType

from ..utils.checks import is_real, store_python_scalars
from ..utils.fsdp_save import WholeModelSaveMixin
from ..utils.resume import LossWindowResumeMixin
from .normalized import (
    Lion,
    LionA,
    LionAR,
    RotationalWrapper,
    _model_order,
    _python_number,
    legacy_layout_pre_hook,
    rotational_param_groups,
)
from .serialization import SafetensorsOptimizerStateMixin

__all__ = [
    "NormalizedOptimizerFactory",
    "WarmupFreeTrainer",
    "WarmupFreeTrainingArguments",
    "build_normalized_optimizer",
    "make_normalized_optimizer",
    "normalized_optimizer",
]

OPTIMIZER_CHOICES = ("adamw", "lion", "lion_a", "lion_ar", "rotational_adamw", "rotational_lion", "rotational_sgdm")

# The optimizers that rotate their weights at the equilibrium angle of the learning rate and the weight decay (unless
# given an angle), and the weight decay `WarmupFreeTrainingArguments` gives them by default: the Lion family's 1.0
# (LionAR's own default, the reference rotational wrapper's Lion default), AdamW's and SGDM's 0.01 (RotationalWrapper's
# default, the reference's AdamW default). transformers' default of 0 leaves them without an angle.
ROTATION_WEIGHT_DECAY = {"lion_ar": 1.0, "rotational_lion": 1.0, "rotational_adamw": 0.01, "rotational_sgdm": 0.01}

logger = logging.getLogger(__name__)


@dataclass
class WarmupFreeTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the normalized-optimizer options.

    `learning_rate`, `weight_decay`, `warmup_steps` (int or fraction) keep their usual meaning; for LionAR and the
    rotational optimizers `learning_rate` x `weight_decay` set the equilibrium rotation angle unless `rotation_angle`
    is given. `weight_decay` defaults to transformers' 0, except for those optimizers without `rotation_angle`, which
    need one: there it defaults to `ROTATION_WEIGHT_DECAY` (1.0 for `lion_ar`, the default optimizer, and
    `rotational_lion`; 0.01 for `rotational_adamw` / `rotational_sgdm`), decided when the arguments are created. The
    optimizer is `normalized_optimizer` (`--optim` is refused unless left at its default). The schedule
    is `lr_scheduler_type`, by default transformers' `warmup_stable_decay` with linear decay to 0 over the last
    `cooldown_fraction` of the steps (the trapezoid of the warmup paper); any other `lr_scheduler_type` is honoured.
    These options are read by `WarmupFreeTrainer` only: another Trainer given these arguments builds its own
    optimizer (AdamW) and cannot resolve the trapezoid's cooldown; there, pass
    `optimizer_cls_and_kwargs=normalized_optimizer(name, args)` and `lr_scheduler_kwargs` with `num_decay_steps`.
    """

    normalized_optimizer: str = field(
        default="lion_ar", metadata={"help": f"Optimizer: one of {', '.join(OPTIMIZER_CHOICES)}."}
    )
    weight_decay: float | None = field(
        default=None,
        metadata={
            "help": "Weight decay; for lion_ar and rotational_* it sets the equilibrium rotation angle with the "
            "learning rate. Default: 1.0 for lion_ar and rotational_lion, 0.01 for rotational_adamw and "
            "rotational_sgdm (they need one for their angle unless --rotation_angle is given), else 0."
        },
    )
    lr_scheduler_type: SchedulerType | str = field(
        default="warmup_stable_decay",
        metadata={
            "help": "LR schedule (transformers' names). The default warmup_stable_decay is the trapezoid: linear "
            "warmup over warmup_steps, constant, linear decay to 0 over the last cooldown_fraction of the steps."
        },
    )
    lion_beta1: float = field(default=0.98, metadata={"help": "Lion interpolation coefficient beta1."})
    lion_beta2: float = field(default=0.98, metadata={"help": "Lion momentum coefficient beta2."})
    nesterov: bool = field(default=True, metadata={"help": "Nesterov momentum for Lion-family optimizers."})
    inverse_bias_correction: bool = field(
        default=True, metadata={"help": "Scale LionA/LionAR steps by 1 - beta2**t (an implicit warmup)."}
    )
    snr_correction: bool = field(
        default=False, metadata={"help": "Scale LionA/LionAR steps by 1/sqrt(1 + gradient SNR) (RRC correction)."}
    )
    rotation_angle: float | None = field(
        default=None, metadata={"help": "Per-step rotation (radians) at peak LR; default: equilibrium angle."}
    )
    zero_mean: bool = field(default=True, metadata={"help": "Keep rotational neurons zero-mean."})
    per_neuron: bool = field(default=True, metadata={"help": "One fixed norm per neuron (else per tensor)."})
    update_norm_decay: float | None = field(
        default=None,
        metadata={
            "help": "EMA coefficient of the update-norm normaliser (0 = exact angle); default 0 for LionAR, "
            "0.9 for rotational_*."
        },
    )
    sgd_momentum: float = field(default=0.9, metadata={"help": "Momentum of rotational_sgdm."})
    cooldown_fraction: float = field(
        default=0.5,
        metadata={
            "help": "warmup_stable_decay only: fraction of the steps in the linear decay, used when "
            "lr_scheduler_kwargs gives no num_decay_steps."
        },
    )

    def __post_init__(self):
        # numpy numbers and bools as Python ones (checked below as such): to_json_string() and the optimizer's saved
        # param groups need them; learning_rate and weight_decay are checked here too
        store_python_scalars(self, base=TrainingArguments)
        store_python_scalars(self, ("learning_rate", "weight_decay"))
        if self.weight_decay is None:  # the default: the weight decay the optimizer's rotation angle needs, else 0
            needs = self.rotation_angle is None and self.normalized_optimizer in ROTATION_WEIGHT_DECAY
            self.weight_decay = ROTATION_WEIGHT_DECAY[self.normalized_optimizer] if needs else 0.0
        super().__post_init__()
        if self.normalized_optimizer not in OPTIMIZER_CHOICES:
            raise ValueError(
                f"--normalized_optimizer must be one of {OPTIMIZER_CHOICES}, got {self.normalized_optimizer!r}."
            )
        _refuse_optim(self)
        # numbers, not bools: `True` is an int in Python and would silently act as 1 (a whole-run cooldown, lr 1.0)
        for name in ("lion_beta1", "lion_beta2"):
            if not (is_real(getattr(self, name)) and 0.0 <= getattr(self, name) < 1.0):
                raise ValueError(f"--{name} must be a number in [0, 1), got {getattr(self, name)!r}.")
        if not (is_real(self.cooldown_fraction) and 0.0 <= self.cooldown_fraction <= 1.0):
            raise ValueError(
                f"--cooldown_fraction must be a number in [0, 1] (the fraction of the steps in the linear decay), got "
                f"{self.cooldown_fraction!r}."
            )
        if self.rotation_angle is not None and not (
            is_real(self.rotation_angle) and 0.0 < self.rotation_angle < math.pi / 2
        ):
            raise ValueError(
                f"--rotation_angle must be a number in (0, pi/2) radians, got {self.rotation_angle!r}; leave it unset "
                "for the equilibrium angle of --learning_rate and --weight_decay."
            )
        if self.update_norm_decay is not None and not (
            is_real(self.update_norm_decay) and 0.0 <= self.update_norm_decay < 1.0
        ):
            raise ValueError(f"--update_norm_decay must be a number in [0, 1), got {self.update_norm_decay!r}.")
        if not (is_real(self.learning_rate) and 0.0 < self.learning_rate < math.inf):
            raise ValueError(
                f"--learning_rate must be a finite number > 0 for the normalized optimizers, got {self.learning_rate!r}."
            )
        if not (is_real(self.weight_decay) and 0.0 <= self.weight_decay < math.inf):
            raise ValueError(f"--weight_decay must be a finite number >= 0, got {self.weight_decay!r}.")
        if not (is_real(self.sgd_momentum) and 0.0 < self.sgd_momentum < math.inf):
            raise ValueError(
                f"--sgd_momentum must be a finite number > 0 (SGD with momentum; 0.9 by default), got "
                f"{self.sgd_momentum!r}."
            )
        if (
            self.normalized_optimizer == "rotational_sgdm"
            and self.rotation_angle is None
            and not self.sgd_momentum < 1.0
        ):
            # the equilibrium angle sqrt(2 lr wd / (1 + m)) is defined for m < 1 only; the optimizer computes it at
            # its first step, which used to be where this failed (after the model and data were set up)
            raise ValueError(
                f"--normalized_optimizer rotational_sgdm rotates at the SGD-momentum equilibrium angle, which needs "
                f"--sgd_momentum < 1 (got {self.sgd_momentum!r}); lower --sgd_momentum or pass --rotation_angle "
                "(radians per step at the peak learning rate)."
            )


# options that exist only on WarmupFreeTrainingArguments, with their defaults (read without instantiating it)
_EXTRA_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(WarmupFreeTrainingArguments)
    if f.name not in TrainingArguments.__dataclass_fields__
}


def _option(args: TrainingArguments, name: str):
    return getattr(args, name, _EXTRA_DEFAULTS[name])


def _refuse_optim(args: TrainingArguments) -> None:
    from ..utils.checks import refuse_optimizer_flags

    refuse_optimizer_flags(
        args,
        f"WarmupFreeTrainer builds the optimizer named by --normalized_optimizer ({', '.join(OPTIMIZER_CHOICES)})",
        "Drop --optim, or use transformers' Trainer for the optimizers --optim names.",
        "Drop it and set that optimizer's own options (--lion_beta1, --lion_beta2, --rotation_angle, --sgd_momentum, "
        "...).",
    )


# Options read only by some normalized optimizers (the others ignore them): name -> the optimizers that read it.
_OPTION_USERS = {
    "adam_beta1": ("adamw", "rotational_adamw"),
    "adam_beta2": ("adamw", "rotational_adamw"),
    "adam_epsilon": ("adamw", "rotational_adamw"),
    "lion_beta1": ("lion", "lion_a", "lion_ar", "rotational_lion"),
    "lion_beta2": ("lion", "lion_a", "lion_ar", "rotational_lion"),
    "sgd_momentum": ("rotational_sgdm",),
    "nesterov": ("lion", "lion_a", "lion_ar", "rotational_lion"),
    "inverse_bias_correction": ("lion_a", "lion_ar"),
    "snr_correction": ("lion_a", "lion_ar"),
    "rotation_angle": ("lion_ar", "rotational_adamw", "rotational_lion", "rotational_sgdm"),
    "zero_mean": ("lion_ar", "rotational_adamw", "rotational_lion", "rotational_sgdm"),
    "per_neuron": ("lion_ar", "rotational_adamw", "rotational_lion", "rotational_sgdm"),
    "update_norm_decay": ("lion_ar", "rotational_adamw", "rotational_lion", "rotational_sgdm"),
}


def _warn_ignored_options(args: TrainingArguments, name: str) -> None:
    """Tell the user about options set away from their default that the chosen optimizer `name` does not read."""
    for option, users in _OPTION_USERS.items():
        field_ = WarmupFreeTrainingArguments.__dataclass_fields__[option]
        value = getattr(args, option, field_.default)
        if name not in users and value != field_.default:
            logger.warning(
                f"--{option}={value} is ignored: --normalized_optimizer {name} does not use it (only "
                f"{', '.join(users)} do)."
            )


_ARGUMENT_NAMES = (
    "`lr` is --learning_rate, `weight_decay` --weight_decay, `betas` --lion_beta1/--lion_beta2 (--adam_beta1/"
    "--adam_beta2 for adamw), `eps` --adam_epsilon, `angle` --rotation_angle, `momentum` --sgd_momentum"
)


def check_normalized_optimizer_arguments(args: TrainingArguments) -> None:
    """Build the optimizer `args` describe on a tiny module, so a bad value or combination (e.g. `lion_ar` with
    `weight_decay=0` and no `rotation_angle`) is a `ValueError` naming the argument before any work, not when `train()`
    builds the optimizer; warn about options the chosen optimizer ignores."""
    name = _option(args, "normalized_optimizer")
    if name not in OPTIMIZER_CHOICES:
        raise ValueError(f"normalized_optimizer must be one of {OPTIMIZER_CHOICES}, got {name!r}.")
    _warn_ignored_options(args, name)
    if name in ROTATION_WEIGHT_DECAY and _option(args, "rotation_angle") is None and args.weight_decay == 0:
        fix = ROTATION_WEIGHT_DECAY[name]
        if not isinstance(args, WarmupFreeTrainingArguments):
            raise ValueError(
                f"WarmupFreeTrainer with plain TrainingArguments builds {name}, which rotates its weights at the "
                "equilibrium angle of --learning_rate and --weight_decay, and --weight_decay is 0 (transformers' "
                f"default): there is no angle. Pass --weight_decay {fix} (the WarmupFreeTrainingArguments default), "
                "or use WarmupFreeTrainingArguments with --rotation_angle (radians per step at the peak learning rate)."
            )
        raise ValueError(
            f"--normalized_optimizer {name} rotates its weights at the equilibrium angle of --learning_rate and "
            f"--weight_decay, and --weight_decay is 0: there is no angle. Pass --weight_decay > 0 (its default, "
            f"{fix}, when not given) or --rotation_angle (radians per step at the peak learning rate)."
        )
    try:
        build_normalized_optimizer(torch.nn.Linear(2, 2), args)
    except ValueError as err:
        raise ValueError(f"{err} (training arguments: {_ARGUMENT_NAMES}.)") from None


def make_normalized_optimizer(
    model: torch.nn.Module,
    optimizer: str = "lion_ar",
    lr: float | None = None,
    weight_decay: float = 0.0,
    **options: Any,
) -> torch.optim.Optimizer:
    """Build a normalized optimizer by name over the parameter groups derived from `model`.

    Rotational tensors (decayed, 2+ dims, not embeddings), `Conv1D` layouts and plain tensors come from
    `rotational_param_groups`. `"adamw"` is the AdamW baseline: weight decay on the 2+-dimensional tensors of the
    Trainer's decay set (embeddings included), none on 1-D parameters (biases, norm gains, FOG's xIELU alphas).

    Args:
        model (`nn.Module`): the model whose parameters are optimized.
        optimizer (`str`): one of `adamw, lion, lion_a, lion_ar, rotational_adamw, rotational_lion, rotational_sgdm`.
        lr (`float`): learning rate (required).
        weight_decay (`float`): weight decay (sets the equilibrium angle of the rotational optimizers).
        **options: the optimizer's own keyword arguments (`betas`, `nesterov`, `angle`, `inverse_bias_correction`,
            `snr_correction`, `zero_mean`, `per_neuron`, `update_norm_decay`, `eps`, `momentum`, ...).
    """
    if optimizer not in OPTIMIZER_CHOICES:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZER_CHOICES}, got {optimizer!r}.")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if lr is None:
        raise ValueError("Pass `lr` (e.g. TrainingArguments.learning_rate) to build a normalized optimizer.")
    if optimizer == "adamw":
        # numpy numbers (np.float32 from a sweep grid) as the Python ones the param groups save, as the normalized
        # optimizers store them
        lr, weight_decay = _python_number(lr), _python_number(weight_decay)
        options = {key: _python_number(value) for key, value in options.items()}
        if isinstance(options.get("betas"), (tuple, list)):
            options["betas"] = tuple(_python_number(b) for b in options["betas"])
        groups = rotational_param_groups(model, weight_decay, rotational_embeddings=True)
        adamw = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **options)
        # a state saved before transposed convolutions got their own (neuron_dim=1) group resumes in its own groups
        adamw._model_param_order = _model_order(model, None)
        adamw.register_load_state_dict_pre_hook(legacy_layout_pre_hook)
        return adamw
    if optimizer == "lion":
        return Lion(model, lr=lr, weight_decay=weight_decay, **options)
    if optimizer == "lion_a":
        return LionA(model, lr=lr, weight_decay=weight_decay, **options)
    if optimizer == "lion_ar":
        return LionAR(model, lr=lr, weight_decay=weight_decay, **options)
    return RotationalWrapper(model, inner=optimizer.split("_", 1)[1], lr=lr, weight_decay=weight_decay, **options)


class NormalizedOptimizerFactory:
    """An optimizer factory in transformers' `optimizer_cls_and_kwargs` protocol: `Trainer` calls
    `NormalizedOptimizerFactory()(model, **kwargs)` (see `transformers.trainer_optimizer.is_optimizer_factory`),
    so the optimizer sees the model and groups its parameters correctly (rotational tensors, `Conv1D` columns,
    non-rotational tied embeddings). Build the pair with `normalized_optimizer(...)`."""

    def __call__(self, model: torch.nn.Module, optimizer: str = "lion_ar", **kwargs) -> torch.optim.Optimizer:
        return make_normalized_optimizer(model, optimizer, **kwargs)


def _options_from_args(name: str, args: TrainingArguments) -> dict:
    """Hyperparameters of optimizer `name` from (WarmupFree)TrainingArguments."""
    lion_betas = (_option(args, "lion_beta1"), _option(args, "lion_beta2"))
    opts: dict[str, Any] = dict(lr=args.learning_rate, weight_decay=args.weight_decay)
    if name in ("adamw", "rotational_adamw"):
        opts.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    elif name in ("lion", "rotational_lion"):
        opts.update(betas=lion_betas, nesterov=_option(args, "nesterov"))
    elif name == "rotational_sgdm":
        opts.update(momentum=_option(args, "sgd_momentum"))
    if name in ("lion_a", "lion_ar"):
        opts.update(
            betas=lion_betas,
            nesterov=_option(args, "nesterov"),
            inverse_bias_correction=_option(args, "inverse_bias_correction"),
            snr_correction=_option(args, "snr_correction"),
        )
    if name == "lion_ar" or name.startswith("rotational_"):
        decay = _option(args, "update_norm_decay")
        opts.update(
            angle=_option(args, "rotation_angle"),
            zero_mean=_option(args, "zero_mean"),
            per_neuron=_option(args, "per_neuron"),
            update_norm_decay=(0.0 if name == "lion_ar" else 0.9) if decay is None else decay,
        )
    return opts


def normalized_optimizer(
    optimizer: str = "lion_ar", args: TrainingArguments | None = None, **overrides: Any
) -> tuple[type, dict]:
    """`(factory, kwargs)` to pass as `transformers.Trainer(optimizer_cls_and_kwargs=...)`: pick a normalized optimizer
    by name, the way `--optim` picks the built-in ones.

    Hyperparameters come from `args` (`learning_rate`, `weight_decay`, Adam betas/eps, and the
    `WarmupFreeTrainingArguments` options when present, else their defaults), then from `overrides`. They are
    checked here, by building the optimizer on a tiny module: a bad value is a `ValueError` now, not when
    `Trainer.train()` builds the optimizer. `lion_ar` and the `rotational_*` optimizers rotate at the equilibrium angle
    of the learning rate and the weight decay, so with plain `TrainingArguments` (weight decay 0 by default) pass
    `--weight_decay` (e.g. 1.0 for `lion_ar`), the `weight_decay=` override or an `angle=`.

    Example:
        ```python
        >>> from hf_ext.optim import normalized_optimizer
        >>> trainer = Trainer(
        ...     model=model,
        ...     args=args,
        ...     train_dataset=ds,
        ...     optimizer_cls_and_kwargs=normalized_optimizer("lion_ar", args, weight_decay=1.0),
        ... )
        ```
    """
    if optimizer not in OPTIMIZER_CHOICES:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZER_CHOICES}, got {optimizer!r}.")
    kwargs = _options_from_args(optimizer, args) if args is not None else {}
    kwargs.update(overrides)
    if kwargs.get("lr") is None:
        raise ValueError("normalized_optimizer needs a learning rate: pass `args` or `lr=`.")
    # checked now, not when `Trainer.train()` builds the optimizer (as `WarmupFreeTrainer` checks its arguments)
    if optimizer in ROTATION_WEIGHT_DECAY and kwargs.get("angle") is None and kwargs.get("weight_decay", 0.0) == 0:
        fix = ROTATION_WEIGHT_DECAY[optimizer]
        raise ValueError(
            f"normalized_optimizer({optimizer!r}) rotates the weights at the equilibrium angle of the learning rate "
            "and the weight decay, and the weight decay is 0 (transformers' TrainingArguments default): there is no "
            f"angle. Pass --weight_decay > 0 in the arguments (e.g. {fix}), or "
            f"normalized_optimizer({optimizer!r}, args, weight_decay={fix}), or an explicit angle= (radians per step "
            "at the peak learning rate)."
        )
    # any other bad value, by argument name; the probe's initialisation leaves the caller's random state as it was
    # (a model built after the call, under one seed, gets the same weights as without it)
    with torch.random.fork_rng(devices=[]):
        make_normalized_optimizer(torch.nn.Linear(2, 2), optimizer, **kwargs)
    return NormalizedOptimizerFactory, {"optimizer": optimizer, **kwargs}


def build_normalized_optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """The optimizer `WarmupFreeTrainer` builds: `args.normalized_optimizer` (default `lion_ar`) with the
    hyperparameters of `args` (plain `TrainingArguments` get the `WarmupFreeTrainingArguments` defaults)."""
    name = _option(args, "normalized_optimizer")
    return make_normalized_optimizer(model, name, **_options_from_args(name, args))


def wsd_schedule_arguments(args: TrainingArguments, num_training_steps: int) -> tuple[int, dict]:
    """`(num_warmup_steps, kwargs)` of transformers' `get_wsd_schedule` as `WarmupFreeTrainer` builds the
    `warmup_stable_decay` schedule: `lr_scheduler_kwargs`, with linear decay and `num_decay_steps =
    round(cooldown_fraction * num_training_steps)` unless they set them. Raises `ValueError` when the warmup and the
    decay do not fit into `num_training_steps` (unless `lr_scheduler_kwargs` set `num_stable_steps`, which transformers
    then uses in place of the step count), or when a `num_decay_steps` of `lr_scheduler_kwargs` is not a finite number >= 0
    (callable before any work, e.g. by a recipe with `max_steps`)."""
    kwargs = dict(args.lr_scheduler_kwargs or {})
    kwargs.setdefault("decay_type", "linear")
    warmup = int(args.get_warmup_steps(num_training_steps))
    if "num_decay_steps" not in kwargs:
        kwargs["num_decay_steps"] = round(_option(args, "cooldown_fraction") * num_training_steps)
        fix = "lower --cooldown_fraction"
    else:
        # transformers takes any number: a negative one left the lr at its peak to the end (no decay), a longer decay
        # than the run started it before the warmup ended (the lr fell from the warmup to a fraction of its peak)
        decay = kwargs["num_decay_steps"]
        if not (is_real(decay) and 0 <= decay < math.inf):
            raise ValueError(
                f"num_decay_steps in --lr_scheduler_kwargs must be a number of steps >= 0 (the length of the decay), "
                f"got {decay!r}."
            )
        fix = "lower num_decay_steps in --lr_scheduler_kwargs"
    if "num_stable_steps" not in kwargs and warmup + kwargs["num_decay_steps"] > num_training_steps:
        raise ValueError(
            f"warmup ({warmup}) + decay ({kwargs['num_decay_steps']}) steps exceed the "
            f"{num_training_steps} training steps; shorten the warmup or {fix}."
        )
    return warmup, kwargs


def ignored_schedule_options(args: TrainingArguments) -> list[str]:
    """What `args` set that the schedule `WarmupFreeTrainer` builds does not read, one sentence each:
    `--cooldown_fraction` away from its default, read only by `warmup_stable_decay` and only where
    `lr_scheduler_kwargs` give no `num_decay_steps`."""
    value = _option(args, "cooldown_fraction")
    if value == _EXTRA_DEFAULTS["cooldown_fraction"]:
        return []
    name = SchedulerType(args.lr_scheduler_type).value
    if name != SchedulerType.WARMUP_STABLE_DECAY.value:
        why = f"--lr_scheduler_type {name} does not read it (only warmup_stable_decay does)"
    elif "num_decay_steps" in (args.lr_scheduler_kwargs or {}):
        why = "num_decay_steps in --lr_scheduler_kwargs sets the decay length"
    else:
        return []
    return [f"--cooldown_fraction {value} is ignored: {why}; drop it"]


RUN_RECORD_NAME = "warmup_free_run.json"

# the flag that sets each optimizer option (a param-group key) of `_options_from_args`
_OPTION_FLAGS = {
    "eps": "--adam_epsilon",
    "momentum": "--sgd_momentum",
    "angle": "--rotation_angle",
}


def schedule_record(args: TrainingArguments, num_training_steps: int) -> dict:
    """The LR schedule `WarmupFreeTrainer` builds for `args` over `num_training_steps`, as JSON-able values: its type,
    warmup steps, step count and keyword arguments (for `warmup_stable_decay` with `num_decay_steps` filled from
    `--cooldown_fraction`; no step count for the constant schedules). Two runs with equal records have the same
    schedule."""
    name = SchedulerType(args.lr_scheduler_type).value
    if name == SchedulerType.WARMUP_STABLE_DECAY.value:
        warmup, kwargs = wsd_schedule_arguments(args, num_training_steps)
    else:
        warmup, kwargs = int(args.get_warmup_steps(num_training_steps)), dict(args.lr_scheduler_kwargs or {})
    # the constant schedules do not depend on the step count (a resume may extend --max_steps)
    constant = name in ("constant", "constant_with_warmup", "reduce_lr_on_plateau")
    record = {
        "lr_scheduler_type": name,
        "num_warmup_steps": warmup,
        "num_training_steps": None if constant else int(num_training_steps),
        "scheduler_kwargs": kwargs,
    }
    return json.loads(json.dumps(record, default=repr))  # as it reads back from the checkpoint


_SCHEDULE_FLAGS = {
    "lr_scheduler_type": "--lr_scheduler_type",
    "num_warmup_steps": "--warmup_steps (warmup steps; below 1, a fraction of the training steps)",
    "num_training_steps": "--max_steps/--num_train_epochs (training steps)",
}


def changed_resume_options(
    args: TrainingArguments,
    groups: list[dict] | None,
    base_lrs: list[float] | None,
    saved_record: dict | None,
    record: dict | None,
) -> list[str]:
    """What a resume from a checkpoint would silently change or ignore: each difference between the checkpoint's
    optimizer param `groups` (restored whole by torch's `load_state_dict`), its scheduler's `base_lrs` and its run
    record (`RUN_RECORD_NAME`: optimizer name and schedule) and what `args` ask for, as `"--flag <checkpoint's> in
    the checkpoint, <new> now"` strings. `None` skips that part (not in the checkpoint, or not built from `args`).
    Not compared: a group's `lr` (the scheduler sets it every step)."""
    name = _option(args, "normalized_optimizer")
    changed: list[str] = []

    def differ(flag: str, saved, new) -> None:
        changed.append(f"{flag} {saved!r} in the checkpoint, {new!r} now")

    if saved_record is not None and record is not None:
        saved_name = saved_record.get("normalized_optimizer")
        if saved_name is not None and saved_name != name:
            differ("--normalized_optimizer", saved_name, name)
            groups = None  # the other optimizer's group keys are not comparable
        saved_sched, sched = saved_record.get("schedule"), record.get("schedule")
        if saved_sched is not None and sched is not None:
            for key, flag in _SCHEDULE_FLAGS.items():
                if saved_sched.get(key) != sched.get(key):
                    differ(flag, saved_sched.get(key), sched.get(key))
            old_kw, new_kw = saved_sched.get("scheduler_kwargs") or {}, sched.get("scheduler_kwargs") or {}
            for key in sorted(set(old_kw) | set(new_kw)):
                if old_kw.get(key) != new_kw.get(key):
                    flag = (
                        "--cooldown_fraction (num_decay_steps)"
                        if key == "num_decay_steps" and "num_decay_steps" not in (args.lr_scheduler_kwargs or {})
                        else f"--lr_scheduler_kwargs {key}"
                    )
                    differ(flag, old_kw.get(key), new_kw.get(key))
    options = _options_from_args(name, args)
    saved_lrs = set(base_lrs or []) | {g["base_lr"] for g in groups or [] if "base_lr" in g}
    if saved_lrs and saved_lrs != {options["lr"]}:
        differ("--learning_rate", sorted(saved_lrs)[0] if len(saved_lrs) == 1 else sorted(saved_lrs), options["lr"])
    if groups is None:
        return changed
    beta_flags = ("--adam_beta1", "--adam_beta2") if name in ("adamw", "rotational_adamw") else None
    beta_flags = beta_flags or ("--lion_beta1", "--lion_beta2")
    for key, new in options.items():
        if key == "lr":
            continue
        # weight decay: on the rotational (decayed) groups only; the plain groups have 0
        relevant = [g for g in groups if g.get("rotational")] if key == "weight_decay" else groups
        saved_values = []
        for g in relevant:
            if g.get(key) not in saved_values:
                saved_values.append(g.get(key))
        for saved in saved_values:
            if key == "betas" and isinstance(saved, (tuple, list)) and len(saved) == 2:
                for flag, old, value in zip(beta_flags, saved, new):
                    if old != value:
                        differ(flag, old, value)
            elif saved != new:
                differ(_OPTION_FLAGS.get(key, f"--{key}"), saved, new)
    return list(dict.fromkeys(changed))


def refuse_changed_resume_options(changed: list[str], checkpoint: str) -> None:
    """Raise the `ValueError` for `changed_resume_options`'s list (nothing when it is empty)."""
    if changed:
        raise ValueError(
            f"resume_from_checkpoint={checkpoint!r} was trained with other optimizer or schedule options: "
            f"{'; '.join(changed)}. A resume restores the checkpoint's optimizer configuration (torch's "
            "load_state_dict restores every param-group value and the scheduler's base learning rates) while the "
            "schedule would be rebuilt from the new arguments, so the run would silently mix both. Resume with the "
            "checkpoint's values, or start a new run (from the checkpoint's weights, without "
            "resume_from_checkpoint) to use the new ones."
        )


def check_checkpoint_options(checkpoint: str | None, args: TrainingArguments, num_training_steps: int) -> None:
    """Refuse, before any work, to resume `WarmupFreeTrainer` with `args` from `checkpoint` when its optimizer or
    schedule options differ (`changed_resume_options`), read from the checkpoint's files (`optimizer_state.json`,
    `scheduler_state.json`, `RUN_RECORD_NAME`; parts a checkpoint lacks are not compared). The trainer checks the
    same after loading; a recipe calls this before the first arm trains."""
    from .serialization import OPTIMIZER_JSON, SCHEDULER_JSON, state_from_json_and_tensors

    if checkpoint is None:
        return

    def read(name: str):
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as fh:
            return state_from_json_and_tensors(json.load(fh), {}) if name == SCHEDULER_JSON else json.load(fh)

    optimizer = read(OPTIMIZER_JSON)
    groups = None
    if isinstance(optimizer, dict) and "param_groups" in optimizer.get("__dict__", {}):
        groups = state_from_json_and_tensors(optimizer["__dict__"]["param_groups"], {})  # no tensors in the groups
    scheduler = read(SCHEDULER_JSON)
    base_lrs = scheduler.get("base_lrs") if isinstance(scheduler, dict) else None
    record = {
        "normalized_optimizer": _option(args, "normalized_optimizer"),
        "schedule": schedule_record(args, num_training_steps),
    }
    refuse_changed_resume_options(
        changed_resume_options(args, groups, base_lrs, read(RUN_RECORD_NAME), record), checkpoint
    )


class WarmupFreeTrainer(LossWindowResumeMixin, SafetensorsOptimizerStateMixin, WholeModelSaveMixin, Trainer):
    """A `Trainer` whose optimizer is the normalized optimizer named by `args.normalized_optimizer` (parameter groups
    derived from the model) and whose schedule is `args.lr_scheduler_type`; for `warmup_stable_decay` missing
    `num_decay_steps` are filled from `cooldown_fraction` (default 0.5) and the decay defaults to linear, which is the
    trapezoid. Optimizer and scheduler state are checkpointed as safetensors + JSON.

    Plain `TrainingArguments` work too, with a `weight_decay` > 0 (e.g. `--weight_decay 1.0`, the
    `WarmupFreeTrainingArguments` default for `lion_ar`): the optimizer is then `lion_ar` with the warmup-free recipe
    defaults of `WarmupFreeTrainingArguments`, and the schedule is whatever `lr_scheduler_type` says (transformers'
    default `linear`). Their default `weight_decay=0` gives `lion_ar` no rotation angle (plain `TrainingArguments`
    have no `rotation_angle`) and is refused at construction with a `ValueError` naming `--weight_decay`. A
    non-default `args.optim` is refused (it would be ignored). `optimizers=` and
    `optimizer_cls_and_kwargs=` given to the constructor take precedence, as in `Trainer`.
    """

    # compares its optimizer options flag by flag after the checkpoint's are restored (`_load_optimizer_and_scheduler`)
    compares_optimizer_options_on_resume = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            _refuse_optim(self.args)
            check_normalized_optimizer_arguments(self.args)
        if self.lr_scheduler is None:  # the schedule this trainer builds (`create_scheduler`)
            for message in ignored_schedule_options(self.args):
                logger.warning(message)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # a multi-process evaluate() counts every evaluation row once (accelerate's padded repeats entered eval_loss)
        from ..utils.evaluation import eval_rows_once_prediction_step

        return eval_rows_once_prediction_step(
            self, super().prediction_step, model, inputs, prediction_loss_only, ignore_keys
        )

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            self.optimizer = build_normalized_optimizer(self.model if model is None else model, self.args)
            self._built_normalized_optimizer = True
            return self.optimizer
        return super().create_optimizer(model)

    def _run_record(self) -> dict:
        """What each checkpoint records about this run (`RUN_RECORD_NAME`): the normalized optimizer the trainer
        built and the schedule it built (absent when they were given to the constructor)."""
        record = {}
        if getattr(self, "_built_normalized_optimizer", False):
            record["normalized_optimizer"] = _option(self.args, "normalized_optimizer")
        if getattr(self, "_schedule_record", None) is not None:
            record["schedule"] = self._schedule_record
        return record

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        record = self._run_record()
        if record and self.args.should_save:
            from ..utils.io import atomic_write_json

            atomic_write_json(os.path.join(output_dir, RUN_RECORD_NAME), record)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        # torch's load_state_dict restored the checkpoint's param groups (betas, nesterov, angle, base_lr, ...) and
        # the scheduler its base_lrs, while the schedule's shape was rebuilt from the new arguments: a difference
        # is refused before any step, naming each flag
        path = os.path.join(checkpoint, RUN_RECORD_NAME)
        saved_record = None
        if os.path.isfile(path):  # none in older checkpoints: the optimizer's group values are still compared
            with open(path, encoding="utf-8") as fh:
                saved_record = json.load(fh)
        built = getattr(self, "_built_normalized_optimizer", False)
        changed = changed_resume_options(
            self.args,
            self.optimizer.param_groups if built else None,
            getattr(self.lr_scheduler, "base_lrs", None) if built else None,
            saved_record,
            self._run_record(),
        )
        refuse_changed_resume_options(changed, checkpoint)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self._schedule_record = schedule_record(self.args, num_training_steps)
        if (
            self.lr_scheduler is None
            and SchedulerType(self.args.lr_scheduler_type) == SchedulerType.WARMUP_STABLE_DECAY
        ):
            from transformers.optimization import get_wsd_schedule

            warmup, kwargs = wsd_schedule_arguments(self.args, num_training_steps)
            self.lr_scheduler = get_wsd_schedule(
                self.optimizer if optimizer is None else optimizer,
                num_warmup_steps=warmup,
                num_training_steps=num_training_steps,
                **kwargs,
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)
