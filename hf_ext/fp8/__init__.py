"""FP8 execution and health monitoring: `convert` (torchao / Transformer Engine / emulated), kurtosis monitor,
`Fp8HealthCallback`."""

from .callback import Fp8HealthCallback, train_with_rollback
from .convert import (
    ao_recipe_kwargs,
    convert,
    fp8_branch_targets,
    fp8_converted_modules,
    fp8_target_filter,
    fp8_target_modules,
    fsdp2_in_use,
    plain_fp8_weights,
    te_fp8_shape_ok,
    te_recipe,
    torchao_config,
)
from .emulation import (
    Fp8Linear,
    fp8_attention_forward,
    fp8_auxiliary_pass,
    fp8_bmm,
    quantize_dequantize,
    register_fp8_attention,
)
from .monitor import SITES, KurtosisMonitor, find_decoder_layers, kurtosis
from .plotting import plot_kurtosis
from .te_attention import (
    TE_ATTENTION_NAME,
    build_te_attention_forward,
    register_te_attention,
    te_attention_forward,
    te_attention_plan,
)
from .trainer import Fp8Trainer, load_fp8_state, resolve_wsd_kwargs

__all__ = [
    "SITES",
    "TE_ATTENTION_NAME",
    "Fp8HealthCallback",
    "Fp8Linear",
    "Fp8Trainer",
    "KurtosisMonitor",
    "ao_recipe_kwargs",
    "build_te_attention_forward",
    "convert",
    "find_decoder_layers",
    "fp8_attention_forward",
    "fp8_auxiliary_pass",
    "fp8_bmm",
    "fp8_branch_targets",
    "fp8_converted_modules",
    "fp8_target_filter",
    "fp8_target_modules",
    "fsdp2_in_use",
    "kurtosis",
    "load_fp8_state",
    "plain_fp8_weights",
    "plot_kurtosis",
    "quantize_dequantize",
    "register_fp8_attention",
    "register_te_attention",
    "resolve_wsd_kwargs",
    "te_attention_forward",
    "te_attention_plan",
    "te_fp8_shape_ok",
    "te_recipe",
    "torchao_config",
    "train_with_rollback",
]
