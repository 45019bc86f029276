"""HyperINF: influence estimation for peft LoRA models with Schulz's iteration on the generalized Fisher matrix."""

from .estimator import InfluenceEstimator, add_influence_column
from .gradients import PerExampleGradients, TrackedMatrix, tracked_lora_parameters
from .influence import METHODS, InfluenceConfig, InfluenceEngine, influence_from_gradients
from .linalg import (
    SchulzConvergenceWarning,
    SchulzDivergenceError,
    SchulzInfo,
    datainf_hvp,
    exact_fim_hvp,
    exact_gfim_hvp,
    fim,
    gfim,
    lissa_hvp,
    lissa_hvp_reference,
    schulz_inverse,
)
from .metrics import PeakMemory, detection_curve, recall_at_fraction, roc_auc, select_lowest_influence

__all__ = [
    "METHODS",
    "InfluenceConfig",
    "InfluenceEngine",
    "InfluenceEstimator",
    "PeakMemory",
    "PerExampleGradients",
    "SchulzConvergenceWarning",
    "SchulzDivergenceError",
    "SchulzInfo",
    "TrackedMatrix",
    "add_influence_column",
    "datainf_hvp",
    "detection_curve",
    "exact_fim_hvp",
    "exact_gfim_hvp",
    "fim",
    "gfim",
    "influence_from_gradients",
    "lissa_hvp",
    "lissa_hvp_reference",
    "recall_at_fraction",
    "roc_auc",
    "schulz_inverse",
    "select_lowest_influence",
    "tracked_lora_parameters",
]
