"""Small shared helpers for the data package."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Cache folder for built artefacts (corpus, tokenizers): ``$HF_EXT_CACHE`` or ``~/.cache/hf_ext``."""
    root = os.environ.get("HF_EXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_ext")
    path = Path(root)
    # an existing file (or a file above it) on the path: a clear error naming the variable, not a NotADirectoryError
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "$HF_EXT_CACHE" if os.environ.get("HF_EXT_CACHE") else "the default cache folder"
                raise NotADirectoryError(
                    f"{where} ({root}) cannot be a folder: {parent} is a file. Point HF_EXT_CACHE at a writable "
                    "folder (it is created if missing)."
                )
            break
    return path
