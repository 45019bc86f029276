"""Small shared helpers for the data package."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Cache folder for built artefacts (corpus, tokenizers): ``$HF_EXT_CACHE`` or ``~/.cache/hf_ext``."""
    root = os.environ.get("HF_EXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_ext")
    return Path(root)
