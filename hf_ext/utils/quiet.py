"""Filters for known, harmless messages that third-party imports print (torchao C extensions on CPU builds)."""

from __future__ import annotations

import logging

#: torchao: its optional CUDA C extensions cannot load on a CPU-only torch build; filtered only on such a build (on a
#: CUDA or ROCm build the same message reports a real problem, e.g. a broken install, and must reach the user)
_CPU_ONLY_NOISE = ("Failed to load",)
#: filtered on every build
_NOISE = (
    "is an Enum subclass and is now natively supported by torch.compile",
)  # torch pytree deprecation via torchao


class _KnownNoiseFilter(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]):
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in self.patterns)


_installed = False


def cpu_only_torch_build() -> bool:
    """True when the installed torch is built without CUDA and without ROCm (`torch.version.cuda`/`.hip` unset): a
    CPU-only build, on which torchao's CUDA extensions are expected not to load."""
    import torch

    return getattr(torch.version, "cuda", None) is None and getattr(torch.version, "hip", None) is None


def silence_known_import_noise() -> None:
    """Drop torch's Enum pytree warnings, and torchao's "Failed to load <C extension>" on a CPU-only torch build only;
    all other records pass."""
    global _installed
    if _installed:
        return
    patterns = _NOISE + (_CPU_ONLY_NOISE if cpu_only_torch_build() else ())
    filt = _KnownNoiseFilter(patterns)
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).addFilter(filt)
    _installed = True
