"""GRAPE multi-source multi-target data-mixture reweighting (with DoGE, DoReMi, uniform and fixed baselines)."""

from .configuration_grape import REWEIGHT_METHODS, GrapeConfig
from .data import pack_by_domain, pad_target_features
from .plotting import plot_mixture_trajectory
from .rules import (
    doge_domain_weights,
    doremi_domain_weights,
    doremi_excess_loss,
    ema_update,
    exponentiated_step,
    grape_domain_weights,
    grape_task_weights,
    resolve_step_size,
    smooth_weights,
    task_objective,
)
from .sampler import MixtureSampler, StreamingMixture
from .state import MixtureState, export_mixture, load_mixture
from .trainer import GrapeTrainer

__all__ = [
    "REWEIGHT_METHODS",
    "GrapeConfig",
    "GrapeTrainer",
    "MixtureSampler",
    "MixtureState",
    "StreamingMixture",
    "doge_domain_weights",
    "doremi_domain_weights",
    "doremi_excess_loss",
    "ema_update",
    "exponentiated_step",
    "export_mixture",
    "grape_domain_weights",
    "grape_task_weights",
    "load_mixture",
    "pack_by_domain",
    "pad_target_features",
    "plot_mixture_trajectory",
    "resolve_step_size",
    "smooth_weights",
    "task_objective",
]
