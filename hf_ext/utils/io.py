"""File-system checks done before any work starts."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping


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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_permissions(path: str, like: str | None = None) -> None:
    """Give a file or folder made by `tempfile` (mode 0600 / 0700) the permissions an ordinary `open` or `makedirs`
    would have given it (0666 / 0777 less the umask), or those of the existing `like` it replaces."""
    if like is not None and os.path.exists(like):
        os.chmod(path, os.stat(like).st_mode & 0o7777)
    else:
        os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def make_temp_dir(parent: str, prefix: str) -> str:
    """A new temporary folder in `parent` with ordinary permissions, to be filled and then renamed into place."""
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix)
    give_default_permissions(tmp)
    return tmp


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file beside `path` and rename it onto `path` only if the block finishes without error.

    Readers never see a half-written file: on failure the temporary file is removed and `path` is left as it was.
    The file gets the permissions of the file it replaces, or those of a plain `open` (not `tempfile`'s 0600).
    If `path` is a symbolic link, the link itself is replaced by a regular file (the rename does not follow it): the
    file it pointed to is left unchanged. Resolve the link first (`os.path.realpath`) to write through it.
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(
            f"atomic_open writes a whole new file: mode must be 'w' or 'wb', got {mode!r} (to append, read the old "
            "content and write it again)."
        )
    if "b" in mode:
        encoding = None
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # `.<name>.<random>.tmp`, with a long name shortened (`.<first 50 characters>~.<random>.tmp`): a file name may
    # have 255 bytes, and the temporary one must fit as well
    name = os.path.basename(path)
    prefix = f".{name}." if len(name.encode("utf-8", "surrogateescape")) <= 200 else f".{name[:50]}~."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        give_default_permissions(tmp, like=path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


_LIBC_SYNCFS = []  # [the C library's syncfs, or None where there is none], looked up once


def _syncfs_reports_errors() -> bool:
    """Whether this kernel's syncfs returns a write error of the filesystem (Linux 5.8 and later; before, it returned 0
    after a failed writeback, so a save could commit its manifest over host files that never reached the disk)."""
    import re

    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return match is not None and (int(match.group(1)), int(match.group(2))) >= (5, 8)


def _syncfs(folder: str) -> bool:
    """Flush the filesystem holding `folder` to disk with one `syncfs(2)` (Linux 5.8 or later); False where it is
    unavailable or cannot report a write error."""
    if not _LIBC_SYNCFS:
        import ctypes

        try:
            _LIBC_SYNCFS.append(getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None))
        except OSError:
            _LIBC_SYNCFS.append(None)
    syncfs = _LIBC_SYNCFS[0]
    if syncfs is None or not _syncfs_reports_errors():
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        return syncfs(fd) == 0
    finally:
        os.close(fd)


def flush_files_to_disk(paths: list[str]) -> None:
    """Make the contents of `paths` (files just written and closed, all in one folder) durable before what depends on
    them is written: one `syncfs` of their filesystem on Linux (an fsync per file costs a disk flush each, ~10 ms: 20
    minutes for 100,000 files), an fsync of each file elsewhere or where syncfs fails."""
    if not paths:
        return
    if _syncfs(os.path.dirname(os.path.abspath(paths[0]))):
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically (temporary file, then rename)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str, obj, indent: int | None = 2) -> None:
    """Write `obj` as JSON to `path` atomically (temporary file, then rename)."""
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=indent)
        fh.write("\n")


def strict_json(obj):
    """`obj` with every non-finite float replaced by the string `"NaN"`, `"Infinity"` or `"-Infinity"` (the encoding
    of protobuf's JSON mapping; `float()` reads each back), so that strict JSON readers (jq, JavaScript, serde, Go)
    accept the file. Mappings, lists and tuples are walked; numpy and torch scalars become Python numbers."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, Mapping):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(value) for value in obj]
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", 0) == 0:
        return strict_json(item())
    return obj


def atomic_write_results(path: str, obj, indent: int | None = 2) -> None:
    """Write a report (results, metrics) as strict JSON to `path` atomically: non-finite numbers (a diverged loss, the
    epsilon of a run without noise) are written as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (see
    `strict_json`). State files that are read back by hf_ext keep `atomic_write_json`, which round-trips them as
    numbers."""
    with atomic_open(path, "w") as fh:
        json.dump(strict_json(obj), fh, indent=indent, allow_nan=False)
        fh.write("\n")


def atomic_savefig(fig, path: str, **kwargs) -> None:
    """Save a matplotlib figure to `path` atomically; the format is taken from `path`'s extension."""
    fmt = kwargs.pop("format", None) or os.path.splitext(path)[1].lstrip(".") or "png"
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=fmt, **kwargs)
