"""`WarmupFreeTrainer`: a Trainer that builds LionA / LionAR / rotational optimizers and a trapezoid schedule."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from .normalized import Lion, LionA, LionAR, RotationalWrapper, rotational_param_groups
from .schedules import get_trapezoid_schedule
from .serialization import SafetensorsOptimizerStateMixin

__all__ = ["WarmupFreeTrainer", "WarmupFreeTrainingArguments", "build_normalized_optimizer"]

OPTIMIZER_CHOICES = ("adamw", "lion", "lion_a", "lion_ar", "rotational_adamw", "rotational_lion", "rotational_sgdm")


@dataclass
class WarmupFreeTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the normalized-optimizer and trapezoid-schedule options.

    `learning_rate`, `weight_decay`, `warmup_steps` (int or fraction) keep their usual meaning; for LionAR and the
    rotational optimizers `learning_rate` x `weight_decay` set the equilibrium rotation angle unless `rotation_angle`
    is given.
    """

    normalized_optimizer: str = field(
        default="lion_ar", metadata={"help": f"Optimizer: one of {', '.join(OPTIMIZER_CHOICES)}."}
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
    trapezoid_schedule: bool = field(
        default=True, metadata={"help": "Use the trapezoid LR schedule instead of lr_scheduler_type."}
    )
    cooldown_fraction: float = field(
        default=0.5, metadata={"help": "Fraction of the steps spent in the trapezoid's linear cooldown."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.normalized_optimizer not in OPTIMIZER_CHOICES:
            raise ValueError(
                f"--normalized_optimizer must be one of {OPTIMIZER_CHOICES}, got {self.normalized_optimizer!r}."
            )
        for name in ("lion_beta1", "lion_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name} must lie in [0, 1), got {getattr(self, name)}.")
        if not 0.0 <= self.cooldown_fraction <= 1.0:
            raise ValueError(f"--cooldown_fraction must lie in [0, 1], got {self.cooldown_fraction}.")


def build_normalized_optimizer(model: torch.nn.Module, args: WarmupFreeTrainingArguments) -> torch.optim.Optimizer:
    """Build the optimizer named by `args.normalized_optimizer` over the model-derived rotational/plain groups."""
    name = args.normalized_optimizer
    lr, wd = args.learning_rate, args.weight_decay
    if name == "adamw":
        # the Trainer's decay set (embeddings decayed), so the AdamW baseline is the standard one
        groups = rotational_param_groups(model, wd, rotational_embeddings=True)
        return torch.optim.AdamW(
            groups, lr=lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, weight_decay=wd
        )
    groups = rotational_param_groups(model, wd)
    lion_betas = (args.lion_beta1, args.lion_beta2)
    if name == "lion":
        return Lion(groups, lr=lr, betas=lion_betas, weight_decay=wd, nesterov=args.nesterov)
    if name == "lion_a":
        return LionA(
            groups,
            lr=lr,
            betas=lion_betas,
            weight_decay=wd,
            nesterov=args.nesterov,
            inverse_bias_correction=args.inverse_bias_correction,
            snr_correction=args.snr_correction,
        )
    if name == "lion_ar":
        return LionAR(
            groups,
            lr=lr,
            betas=lion_betas,
            weight_decay=wd,
            angle=args.rotation_angle,
            nesterov=args.nesterov,
            inverse_bias_correction=args.inverse_bias_correction,
            snr_correction=args.snr_correction,
            zero_mean=args.zero_mean,
            per_neuron=args.per_neuron,
            update_norm_decay=args.update_norm_decay or 0.0,
        )
    inner = name.split("_", 1)[1]
    kwargs: dict = {}
    if inner == "adamw":
        kwargs = dict(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    elif inner == "lion":
        kwargs = dict(betas=lion_betas, nesterov=args.nesterov)
    else:
        kwargs = dict(momentum=args.sgd_momentum)
    return RotationalWrapper(
        groups,
        inner=inner,
        lr=lr,
        weight_decay=wd,
        angle=args.rotation_angle,
        zero_mean=args.zero_mean,
        per_neuron=args.per_neuron,
        update_norm_decay=0.9 if args.update_norm_decay is None else args.update_norm_decay,
        **kwargs,
    )


class WarmupFreeTrainer(SafetensorsOptimizerStateMixin, Trainer):
    """A `Trainer` whose optimizer comes from `WarmupFreeTrainingArguments` (parameter groups derived from the model)
    and whose schedule is the trapezoid (warmup from `args.warmup_steps`, linear cooldown over the last
    `args.cooldown_fraction`). Optimizer and scheduler state are checkpointed as safetensors + JSON.

    Plain `TrainingArguments` also work (the optimizer is then `lion_ar` with the warmup-free recipe defaults).
    """

    def _normalized_args(self) -> WarmupFreeTrainingArguments:
        if isinstance(self.args, WarmupFreeTrainingArguments):
            return self.args
        defaults = WarmupFreeTrainingArguments(output_dir=self.args.output_dir)
        for name in ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon"):
            setattr(defaults, name, getattr(self.args, name))
        return defaults

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = build_normalized_optimizer(
                self.model if model is None else model, self._normalized_args()
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        args = self._normalized_args()
        if self.lr_scheduler is None and getattr(args, "trapezoid_schedule", True):
            self.lr_scheduler = get_trapezoid_schedule(
                self.optimizer if optimizer is None else optimizer,
                num_training_steps,
                int(self.args.get_warmup_steps(num_training_steps)),
                args.cooldown_fraction,
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)
