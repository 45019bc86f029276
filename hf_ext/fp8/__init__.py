"""FP8 execution and health monitoring: `convert` (torchao / Transformer Engine / emulated), kurtosis monitor,
`Fp8HealthCallback`."""

from .callback import Fp8HealthCallback, train_with_rollback
from .convert import (
    ao_recipe_kwargs,
    convert,
    fp8_converted_modules,
    fp8_target_filter,
    fp8_target_modules,
    te_fp8_shape_ok,
    te_recipe,
    torchao_config,
)
from .emulation import Fp8Linear, fp8_attention_forward, fp8_bmm, quantize_dequantize, register_fp8_attention
from .monitor import SITES, KurtosisMonitor, find_decoder_layers, kurtosis
from .plotting import plot_kurtosis
from .trainer import Fp8Trainer, resolve_wsd_kwargs

__all__ = [
    "SITES",
    "Fp8HealthCallback",
    "Fp8Linear",
    "Fp8Trainer",
    "KurtosisMonitor",
    "ao_recipe_kwargs",
    "convert",
    "find_decoder_layers",
    "fp8_attention_forward",
    "fp8_bmm",
    "fp8_converted_modules",
    "fp8_target_filter",
    "fp8_target_modules",
    "kurtosis",
    "plot_kurtosis",
    "quantize_dequantize",
    "register_fp8_attention",
    "resolve_wsd_kwargs",
    "te_fp8_shape_ok",
    "te_recipe",
    "torchao_config",
    "train_with_rollback",
]
