"""hf_ext: HuggingFace-native tools for ten EPFL research systems.

`import hf_ext` registers the package's model types with transformers' Auto classes (models are imported lazily,
on first use) and keeps third-party import noise out of the user's terminal. Method packages (`hf_ext.grape`,
`hf_ext.optim`, ...) are imported on demand.
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
