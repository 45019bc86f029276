"""Layer-paired inference: run pairs of adjacent Llama-family layers in parallel, as one wide layer each."""

from ...utils import register_auto_model_lazily
from .configuration_layer_parallel import LayerParallelConfig

_MODELING = f"{__name__}.modeling_layer_parallel"
_LAZY = (
    "LayerParallelForCausalLM",
    "LayerParallelModel",
    "LayerParallelPreTrainedModel",
    "convert_to_layer_parallel",
    "merge_peft_adapters",
)


def _register() -> None:
    from transformers import AutoConfig

    AutoConfig.register(LayerParallelConfig.model_type, LayerParallelConfig, exist_ok=True)
    register_auto_model_lazily(
        LayerParallelConfig,
        _MODELING,
        {"AutoModel": "LayerParallelModel", "AutoModelForCausalLM": "LayerParallelForCausalLM"},
    )


_register()


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_MODELING), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LayerParallelConfig", *_LAZY]
