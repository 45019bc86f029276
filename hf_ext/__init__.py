"""hf_ext: HuggingFace-native tools for ten EPFL research systems.

`import hf_ext` registers the architectures under `hf_ext.models` (`fog`, `layer_parallel`) with transformers' Auto
classes (their model code is imported lazily, on first use) and keeps third-party import noise out of the user's
terminal. Method packages (`hf_ext.grape`, `hf_ext.optim`, ...) are imported on demand, and a model type that belongs
to a method package is registered when that package is imported: NeuralGrok's `grok_decoder` needs
`import hf_ext.neuralgrok` before `AutoConfig`/`AutoModelForCausalLM` can load it.
"""

from __future__ import annotations

import importlib

from .utils.quiet import silence_known_import_noise

__version__ = "0.1.0"

silence_known_import_noise()

_SUBPACKAGES = (
    "compliance",
    "data",
    "federated",
    "fp8",
    "grape",
    "hyperinf",
    "metadata",
    "models",
    "neuralgrok",
    "optim",
    "recipes",
    "utils",
)


def _register_models() -> None:
    from . import models  # noqa: F401  (registers configs eagerly, model classes lazily)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hf_ext' has no attribute {name!r}")


_register_models()
