"""Filters for known, harmless messages that third-party imports print (torchao C extensions on CPU builds)."""

from __future__ import annotations

import logging

_NOISE = (
    "Failed to load",  # torchao: optional CUDA C extensions on a CPU-only torch build
    "is an Enum subclass and is now natively supported by torch.compile",  # torch pytree deprecation via torchao
)


class _KnownNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in _NOISE)


_installed = False


def silence_known_import_noise() -> None:
    """Drop torchao's "Failed to load <C extension>" and torch's Enum pytree warnings; all other records pass."""
    global _installed
    if _installed:
        return
    filt = _KnownNoiseFilter()
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).addFilter(filt)
    _installed = True
