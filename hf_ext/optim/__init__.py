"""Warmup-free normalized optimizers (LionA, LionAR, rotational wrapper) and stochastic cubic Newton with momentum."""

from .cubic_newton import (
    CubicNewton,
    FlatParameters,
    check_second_order_support,
    hessian_vector_product,
    make_flat_loss,
    solve_cubic_exact,
    solve_cubic_gd,
    solve_cubic_lanczos,
)
from .cubic_trainer import CubicNewtonTrainer, CubicNewtonTrainingArguments
from .metrics import (
    UpdateMetricsCallback,
    angular_update,
    gradient_momentum_cosine,
    l2_update_norm,
    plot_update_metrics,
    relative_representation_change,
    relative_update_norms,
)
from .normalized import Lion, LionA, LionAR, RotationalWrapper, equilibrium_angle, rotational_param_groups
from .schedules import TrapezoidSchedule, get_trapezoid_schedule
from .serialization import load_optimizer_state, save_optimizer_state
from .warmup_trainer import (
    NormalizedOptimizerFactory,
    WarmupFreeTrainer,
    WarmupFreeTrainingArguments,
    build_normalized_optimizer,
    make_normalized_optimizer,
    normalized_optimizer,
)

__all__ = [
    "CubicNewton",
    "CubicNewtonTrainer",
    "CubicNewtonTrainingArguments",
    "FlatParameters",
    "check_second_order_support",
    "hessian_vector_product",
    "make_flat_loss",
    "solve_cubic_exact",
    "solve_cubic_gd",
    "solve_cubic_lanczos",
    "Lion",
    "LionA",
    "LionAR",
    "NormalizedOptimizerFactory",
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
    "make_normalized_optimizer",
    "normalized_optimizer",
    "plot_update_metrics",
    "relative_representation_change",
    "relative_update_norms",
    "rotational_param_groups",
    "save_optimizer_state",
]
