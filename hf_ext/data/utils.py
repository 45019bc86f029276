"""Small shared helpers for the data package."""

from __future__ import annotations

import os
from pathlib import Path


def _cache_root() -> tuple[str, str]:
    """The cache root, and how to name it in a message. A `~` or `$VAR` in ``$HF_EXT_CACHE`` is expanded, as the Hub
    expands ``HF_HOME`` (a value set where no shell expands it, e.g. a container's environment, made a folder named
    `~` in the working directory)."""
    env = os.environ.get("HF_EXT_CACHE")
    if env:
        return os.path.expandvars(os.path.expanduser(env)), "$HF_EXT_CACHE"
    return os.path.join(os.path.expanduser("~"), ".cache", "hf_ext"), "the default cache folder"


def cache_dir() -> Path:
    """Cache folder for built artefacts (corpus, tokenizers): ``$HF_EXT_CACHE`` or ``~/.cache/hf_ext``."""
    root, where = _cache_root()
    path = Path(root)
    # an existing file (or a file above it) on the path: a clear error naming the variable, not a NotADirectoryError
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(
                    f"{where} ({root}) cannot be a folder: {parent} is a file. Point HF_EXT_CACHE at a writable "
                    "folder (it is created if missing)."
                )
            break
    return path


def writable_cache_subdir(path: Path) -> Path:
    """Create ``path`` (a folder under `cache_dir()`) if missing and check that it can be written to.

    Called before a cache entry is built, so an unwritable cache (a read-only home, or a container user whose
    ``$HOME`` is ``/``) stops the run at once with an error naming ``HF_EXT_CACHE`` and the folder it tried, instead of
    a bare `FileNotFoundError` / `PermissionError` after the work. Like the Hub's own caches (``HF_HOME``), there is no
    silent fallback to another folder: point ``HF_EXT_CACHE`` at a writable folder.
    """
    root, where = _cache_root()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(path))
    except OSError as err:
        reason = err.strerror or str(err)
        raise PermissionError(
            f"Cannot write the hf_ext cache folder {path} ({reason}); it lies under {where} {root}"
            f"{'' if where.startswith('$') else ' (HF_EXT_CACHE is unset)'}. Set HF_EXT_CACHE to a writable folder "
            "(created if missing), e.g. HF_EXT_CACHE=\"$PWD/.hf_ext_cache\"."
        ) from err
    return path
