"""File-system checks done before any work starts."""

from __future__ import annotations

import os
import tempfile


def ensure_writable_dir(path: str, arg_name: str = "--output_dir") -> None:
    """Create `path` if needed and check that files can be written there; raise `ValueError` naming `arg_name`."""
    if not path:
        raise ValueError(f"{arg_name} must be a non-empty path.")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(
            f"{arg_name}={path!r} is not writable ({err.strerror or err}); choose a folder you can write to."
        ) from err
