"""Warmup-free normalized optimizers (LionA, LionAR, rotational wrapper) and stochastic cubic Newton with momentum."""

from .metrics import (
    UpdateMetricsCallback,
    angular_update,
    gradient_momentum_cosine,
    l2_update_norm,
    plot_update_metrics,
    relative_representation_change,
)
from .normalized import Lion, LionA, LionAR, RotationalWrapper, equilibrium_angle, rotational_param_groups
from .schedules import TrapezoidSchedule, get_trapezoid_schedule
from .serialization import load_optimizer_state, save_optimizer_state
from .warmup_trainer import WarmupFreeTrainer, WarmupFreeTrainingArguments, build_normalized_optimizer

__all__ = [
    "Lion",
    "LionA",
    "LionAR",
    "RotationalWrapper",
    "TrapezoidSchedule",
    "UpdateMetricsCallback",
    "WarmupFreeTrainer",
    "WarmupFreeTrainingArguments",
    "angular_update",
    "build_normalized_optimizer",
    "equilibrium_angle",
    "get_trapezoid_schedule",
    "gradient_momentum_cosine",
    "l2_update_norm",
    "load_optimizer_state",
    "plot_update_metrics",
    "relative_representation_change",
    "rotational_param_groups",
    "save_optimizer_state",
]
