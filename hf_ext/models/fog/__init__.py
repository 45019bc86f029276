"""FOG: FP8-stable decoder LLM (`FogConfig`, `FogModel`, `FogForCausalLM`), registered with the Auto classes."""

from transformers import AutoConfig

from ...utils import register_auto_model_lazily
from .configuration_fog import FogConfig

AutoConfig.register("fog", FogConfig, exist_ok=True)
register_auto_model_lazily(
    FogConfig,
    f"{__name__}.modeling_fog",
    {"AutoModel": "FogModel", "AutoModelForCausalLM": "FogForCausalLM"},
)

_MODELING_NAMES = (
    "FogForCausalLM",
    "FogModel",
    "FogPreTrainedModel",
    "convert_authors_config",
    "convert_authors_state_dict",
    "load_authors_state_dict",
)


def __getattr__(name: str):
    if name in _MODELING_NAMES:
        from . import modeling_fog

        return getattr(modeling_fog, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FogConfig", *_MODELING_NAMES]
