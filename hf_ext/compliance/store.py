"""A snapshot of robots.txt files: host -> (text, fetch date), stored as a folder, JSONL or Parquet."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from pathlib import Path
from typing import NamedTuple

from ..utils.checks import is_int, is_real
from .rfc9309 import MAX_ROBOTS_BYTES, _decode_bytes, _encode_bytes, _without_bom, _without_cut_line
from .robots import _ESCAPED_BYTE, STATUS_CLASSES, normalize_host, status_class

_META_FILE = "_snapshot.json"
_STAGED_SUFFIX = ".staged"
_STAGED_META_FILE = _META_FILE + _STAGED_SUFFIX


def _staged(folder: Path, name: str) -> Path:
    """Where a folder save stages the host file `name` before its manifest commits it (hidden, never a `*.txt`)."""
    return folder / f".{name}{_STAGED_SUFFIX}"


def _host_file(host: str) -> str:
    """The name of `host`'s file in a folder snapshot: `<host>.txt`, or, for a host whose staged file
    (`.<host>.txt.staged`) would pass the 255-byte limit of a file name (244 characters or more; DNS allows 253),
    its first 200 bytes, `~` and a hash of the host, `.txt`; the manifest maps such a name back to its host."""
    name = f"{host}.txt"
    if len(_staged(Path(), name).name.encode("utf-8")) <= 255:
        return name
    short = host.encode("utf-8")[:200].decode("utf-8", "ignore")
    return f"{short}~{hashlib.sha256(host.encode('utf-8')).hexdigest()[:16]}.txt"


def _listed_files(meta_path: Path) -> list[str] | None:
    """The host file names a manifest lists (`None` if it is missing, unreadable or has no list)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), list):
        return None
    return [n for n in meta["files"] if isinstance(n, str) and os.sep not in n and "/" not in n and n.endswith(".txt")]


def _finish_staged_save(folder: Path) -> None:
    """Complete a folder save whose staged manifest exists: rename its staged host files into place, remove the host
    files only the manifest in force lists, then rename the staged manifest onto it. Every step can be redone after a
    kill."""
    from ..utils.io import give_default_permissions

    staged_meta = folder / _STAGED_META_FILE
    new = _listed_files(staged_meta) if staged_meta.is_file() else None
    if new is None:
        return
    for name in new:
        staged = _staged(folder, name)
        if staged.is_file():
            give_default_permissions(str(staged), like=str(folder / name))
            os.replace(staged, folder / name)
    # removed while the staged manifest still names the snapshot in force, so a kill here is redone by the next save
    for name in set(_listed_files(folder / _META_FILE) or []) - set(new):
        with contextlib.suppress(FileNotFoundError):
            os.remove(folder / name)
    os.replace(staged_meta, folder / _META_FILE)


_FORMATS = ("folder", "jsonl", "parquet")
_LOAD_RETRY_S = 60.0


def _pin_manifests(folder: Path) -> list:
    """Both manifests of a folder snapshot, held open (`None` for one that is absent): a save writes each as a new
    file and renames it into place, and a file held open keeps its inode, so no later manifest can have it."""
    pinned = []
    for name in (_META_FILE, _STAGED_META_FILE):
        try:
            pinned.append(os.open(folder / name, os.O_RDONLY))
        except OSError:
            pinned.append(None)
    return pinned


def _manifests_unchanged(folder: Path, pinned: list) -> bool:
    """Whether both manifests are still the files `_pin_manifests` opened (no save committed or completed since);
    closes them. The staged manifest is looked at first: a save that committed since the pin either still has it (a
    new file there) or has renamed it onto `_snapshot.json` before that look, which the look at `_snapshot.json`
    after it sees. The other order misses a save whose rename falls between the two looks (both look unchanged)."""
    same = True
    for name, fd in reversed(list(zip((_META_FILE, _STAGED_META_FILE), pinned))):
        try:
            now = os.stat(folder / name)
        except OSError:
            now = None
        if fd is None:
            same = same and now is None
            continue
        was = os.fstat(fd)
        os.close(fd)
        same = same and now is not None and (now.st_dev, now.st_ino) == (was.st_dev, was.st_ino)
    return same


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on a snapshot folder for one save (`fcntl.flock` on the folder itself, so no lock file is
    left in it): two processes saving into one folder take turns. Without `fcntl` (Windows), no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX only
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class RobotsRecord:
    """One host's robots.txt as seen at `fetched_at`.

    Args:
        host (`str`): Normalised host name (see `normalize_host`).
        text (`str | None`): The robots.txt body; `None` when the host had none (or it could not be fetched).
        fetched_at (`str | None`): ISO date (or datetime) of the fetch.
        status (`int | None`): HTTP status of the fetch, when known.
        error (`str | None`): Why the fetch failed without an HTTP status (network error, timeout): the host was
            *unreachable* in RFC 9309's sense.
        base_fetched_at (`str | None`): Set by `RobotsTxtStore.update_from_fetch` when the record shown is dated by
            a later 304 or unreachable fetch: the date of the last fetch that decided the record on its own (a body,
            a 3xx/4xx, no file). `None`: `fetched_at` is that date.
        masked_fetched_at, masked_status, masked_error: Set by `update_from_fetch`: a fetch after the one shown that
            the record does not show (an unreachable fetch while the cached available copy is used; a 304 while a later
            unreachable fetch is shown). Kept so that an older fetch applied later gives the record that applying
            every fetch in date order gives. `None`: there is none.
    """

    host: str
    text: str | None
    fetched_at: str | None = None
    status: int | None = None
    error: str | None = None
    base_fetched_at: str | None = None
    masked_fetched_at: str | None = None
    masked_status: int | None = None
    masked_error: str | None = None

    @property
    def status_class(self) -> str:
        """`"available"`, `"unavailable"`, `"unreachable"` or `"missing"` (RFC 9309 section 2.3.1)."""
        return status_class(self.text, self.status, self.error)


def _refuse_surrogates(value, what: str, host: str) -> None:
    """Refuse a `str` that cannot be written as UTF-8 (lone surrogates, e.g. from `bytes.decode(errors=
    "surrogateescape")`): no snapshot format could save it, so the store would hold what it cannot save."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"{what} of {host!r} holds a lone surrogate ({value[err.start]!r} at position {err.start}), which no "
                "snapshot format can store as UTF-8; pass a str decoded with errors='replace'."
            ) from None


def _decode(text, host: str = "") -> str | None:
    """The text a store keeps for `text`, read by the parser as it reads `text` itself: bytes decoded as the parser
    decodes them (one byte order mark skipped, UTF-8 with each byte that is not UTF-8 kept as its surrogate escape,
    `errors="surrogateescape"`: byte 0xE9 is U+DCE9, which a rule matches as `%E9` and the parser's 500 KiB and line
    limits count as one byte; see `_cut_utf8`), a str with one leading byte order mark, or leading part of one as the
    surrogate escapes of its bytes, removed (a str holding surrogate escapes, e.g. `body.decode("utf-8",
    "surrogateescape")`, in the form decoding its bytes gives: the same text and decisions as those bytes). A second
    byte order mark is content to the parser (it spoils the first line, as in Google's parser), so a text that still
    starts with one (or with U+DCEF, the escape of byte 0xEF) keeps the mark the parser skips in front of it."""
    if text is None:
        return None
    if isinstance(text, bytes | bytearray):
        text = _decode_bytes(bytes(text))
    elif isinstance(text, str):
        text = _without_bom(_escaped_bytes_form(text, host))
    else:
        raise TypeError(f"robots.txt text must be str, bytes or None, got {type(text).__name__}.")
    # a text that starts like a mark (U+FEFF, or U+DCEF: the escape of byte 0xEF) keeps a U+FEFF in front of it, the
    # one mark the parser skips, so the parser reads the rest as content
    return "\ufeff" + text if text.startswith(("\ufeff", "\udcef")) else text


def _stored_text(text):
    """A text read from a JSONL or Parquet snapshot (a string column), given to `add` as the text it meant when it
    was saved: snapshots written before 2026-12-07 kept a text starting with U+DCEF (content after a skipped byte
    order mark, e.g. of the bytes `EF BB BF EF BB ...`) without the U+FEFF in front that `_decode` now adds; read as
    a str given to `add`, its U+DCEF would be skipped as a partial mark and the decision would change."""
    if isinstance(text, str) and text.startswith("\udcef"):
        return "\ufeff" + text
    return text


def _escaped_bytes_form(text: str, host: str) -> str:
    """`text` as decoding its bytes with surrogateescape gives it (surrogate escapes of bytes that form valid UTF-8
    become those characters); a lone surrogate that is not the escape of a byte (U+DC80..U+DCFF) is refused: it
    stands for no byte a server sent, and no snapshot format could store it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"robots.txt text of {host!r} holds a lone surrogate ({text[err.start]!r} at position {err.start}) that "
            "is not the escape of a byte (errors='surrogateescape' writes byte 0x80..0xFF as U+DC80..U+DCFF); pass "
            "the fetched bytes, or the text decoded with errors='surrogateescape'."
        ) from None


def _is_utf8(text: str | None) -> bool:
    """Whether a stored text is valid UTF-8 (holds no surrogate escape of a byte that is not)."""
    if text is None or text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# What `update_from_fetch` records for a 304 Not Modified when the store holds no robots.txt it could confirm.
_NOT_MODIFIED_WITHOUT_COPY = (
    "NotModified: the server answered 304 Not Modified, but no copy of robots.txt is stored for it to confirm"
)

# The fields of `RobotsRecord` that keep a record's fetch history (see `update_from_fetch`); every format writes them
# only when set, so a snapshot without them is read as before.
_HISTORY_FIELDS = ("base_fetched_at", "masked_fetched_at", "masked_status", "masked_error")

# At one instant, fetches apply in this order (`_after`): a decided record, then a body, then a 304, then an
# unreachable fetch (which keeps a body of the same instant as the cached copy and disallows over a 4xx).
_RANK = {"missing": 0, "unavailable": 0, "available": 1, "not_modified": 2, "unreachable": 3}


class _Fetch(NamedTuple):
    date: str
    kind: str  # a status class, or "not_modified" (a 304)
    text: str | None = None
    status: int | None = None
    error: str | None = None


def _fetch_kind(text, status, error) -> str:
    return "not_modified" if status == 304 and not error else status_class(text, status, error)


def _after(a: _Fetch, b: _Fetch) -> bool:
    """Whether fetch `a` applies after fetch `b`: by date (as instants, see `_fetched_before`); at one instant by
    `_RANK`, then by the date as written, status, text and error (any fixed order: the result must not depend on the
    order in which the fetches are applied)."""
    if _fetched_before(b.date, a.date):
        return True
    if _fetched_before(a.date, b.date):
        return False

    def key(f):
        status = -1 if f.status is None else f.status
        return (_RANK[f.kind], f.date, status, f.text is not None, f.text or "", f.error or "")

    return key(a) > key(b)


def _history(r: RobotsRecord) -> tuple:
    """A stored dated record as `(decided, unreachable, not_modified)`: the last fetch that decided the record on its
    own (a body, a 3xx/4xx, no file; `None` when none is known), and the latest unreachable fetch and the latest 304
    after it (`None` when none)."""
    masked = None
    if r.masked_fetched_at is not None:
        kind = _fetch_kind(None, r.masked_status, r.masked_error)
        masked = _Fetch(r.masked_fetched_at, kind, None, r.masked_status, r.masked_error)
    if r.status_class == "available":
        decided = _Fetch(r.base_fetched_at or r.fetched_at, "available", r.text, r.status)
        not_modified = _Fetch(r.fetched_at, "not_modified", None, 304) if r.base_fetched_at else None
        return decided, masked, not_modified
    if r.status_class != "unreachable":
        return _Fetch(r.fetched_at, r.status_class, r.text, r.status, r.error), None, None
    # an unreachable record is a fetch after the deciding one, whose content no longer matters (only its date)
    decided = None if r.base_fetched_at is None else _Fetch(r.base_fetched_at, "unavailable")
    if r.error == _NOT_MODIFIED_WITHOUT_COPY and r.status is None:
        return decided, None, _Fetch(r.fetched_at, "not_modified", None, 304)
    return decided, _Fetch(r.fetched_at, "unreachable", None, r.status, r.error), masked


def _apply_fetch(history: tuple, fetch: _Fetch) -> tuple:
    """`history` (see `_history`) after one more fetch: the fold of RFC 9309's rules over fetches in date order."""
    decided, unreachable, not_modified = history
    if decided is not None and _after(decided, fetch):
        return history  # before the fetch that decided the record: replaced by it whatever it was
    if fetch.kind == "unreachable":
        return decided, fetch if unreachable is None or _after(fetch, unreachable) else unreachable, not_modified
    if fetch.kind == "not_modified":
        return decided, unreachable, fetch if not_modified is None or _after(fetch, not_modified) else not_modified

    def later(f):
        return f if f is not None and _after(f, fetch) else None

    return fetch, later(unreachable), later(not_modified)


def _shown(history: tuple) -> dict:
    """The record fields (`RobotsTxtStore.add`'s arguments) that `history` shows."""
    decided, unreachable, not_modified = history
    if unreachable is not None and not_modified is not None and _after(not_modified, unreachable):
        unreachable = None  # a later 304 decides from then on, whatever the state: it never shows again
    if decided is not None and decided.kind == "available":  # the cached copy (RFC 9309 section 2.4)
        fields = {"text": decided.text, "fetched_at": decided.date, "status": decided.status}
        if not_modified is not None:  # the copy as confirmed by the latest 304
            fields.update(fetched_at=not_modified.date, base_fetched_at=decided.date)
        if unreachable is not None:
            fields.update(
                masked_fetched_at=unreachable.date, masked_status=unreachable.status, masked_error=unreachable.error
            )
        return fields
    base = None if decided is None else decided.date
    if unreachable is not None:
        fields = {"fetched_at": unreachable.date, "status": unreachable.status, "error": unreachable.error}
        if not_modified is not None:
            fields.update(masked_fetched_at=not_modified.date, masked_status=304)
    elif not_modified is not None:  # a 304 without a copy to confirm: no usable answer (unreachable)
        fields = {"fetched_at": not_modified.date, "error": _NOT_MODIFIED_WITHOUT_COPY}
    else:
        return {"text": decided.text, "fetched_at": decided.date, "status": decided.status, "error": decided.error}
    fields.update(text=None, base_fetched_at=base)
    return fields


class RobotsTxtStore(Mapping):
    """Host -> `RobotsRecord` mapping with readers and writers for three on-disk layouts.

    * folder: one `<host>.txt` file per host plus an optional `_snapshot.json` with `{"fetched_at": ...,
      "hosts": {host: {"fetched_at": ..., "status": ..., "error": ..., "missing": true}}}` (`save` also writes
      `"files"`, the host files, and `"file"` for a host too long for a file name, the shortened name it used);
    * `.jsonl`: one object per line with `host`, `robots_txt`, `fetched_at`, `status`, `error`;
    * `.parquet`: the same columns.

    Each format also writes a record's fetch history (`base_fetched_at`, `masked_fetched_at`, `masked_status`,
    `masked_error`, see `RobotsRecord` and `update_from_fetch`) when one is set: a snapshot without it reads as before.

    A robots.txt that is not valid UTF-8 (e.g. Latin-1) keeps the value of every byte: its text holds each such byte as
    its surrogate escape (`errors="surrogateescape"`), a folder writes the bytes as served, JSONL the escape `\\udcXX`
    (which `json.loads` reads back) and Parquet a binary `robots_txt` column (the bytes of every text) instead of a
    string one. Snapshots written before 2026-12-04 hold U+FFFD for such a byte and are read as they are (its U+FFFD
    count as the three bytes of a real one toward the parser's limits, see `rfc9309._cut_utf8`).

    Keys are normalised with `normalize_host`, so `WWW.Example.com:443` and `www.example.com` are one entry.
    Records whose `text` is `None` document a host known to have no robots.txt.

    Every change of a record (`add`, `update_from_fetch`) bumps the store's version, so a `RobotsCompliance` built on
    the store drops the host policies it cached from the old records on its next decision.
    """

    def _add_loaded(self, seen: dict, where: str, host, *fields, **history) -> None:
        """`add` for a record read from a snapshot, refusing a second record of the same host: two fetches of one host
        in a snapshot are ambiguous (which one applies?), and the later line would silently win."""
        if not isinstance(host, str):
            raise TypeError(f"{where}: host must be a str, got {type(host).__name__}.")
        key = normalize_host(host)
        if key in seen:
            raise ValueError(
                f"{where}: host {host!r} is recorded twice ({seen[key]} and {where}, both {key!r}); keep one record per "
                "host (the fetch that applies to the snapshot's date)."
            )
        try:
            self.add(host, *fields, **history)
        except (TypeError, ValueError) as err:  # a bad field of this record: say which record of which snapshot
            raise (TypeError if isinstance(err, TypeError) else ValueError)(f"{where}: {err}") from None
        seen[key] = where

    def __init__(self, records: Iterable[RobotsRecord] = (), fetched_at: str | None = None):
        self._records: dict[str, RobotsRecord] = {}
        # bumped on every change of `_records`: `RobotsCompliance` drops its cached policies when it changed
        self._version = 0
        self.fetched_at = _iso_date(fetched_at, "the snapshot")
        if isinstance(records, (str, bytes, RobotsRecord)):
            raise TypeError(
                f"records must be an iterable of RobotsRecord, got a single {type(records).__name__}; wrap it in a list."
            )
        seen: dict = {}
        for i, record in enumerate(records):
            if not isinstance(record, RobotsRecord):
                raise TypeError(f"records[{i}] must be a RobotsRecord, got {type(record).__name__}.")
            # two records of one host would leave whichever comes last, whatever its date: refused as in `load`
            self._add_loaded(
                seen, f"records[{i}]", record.host, record.text, record.fetched_at, record.status, record.error,
                **_history_of(record),
            )  # fmt: skip

    # Mapping API --------------------------------------------------------------------------------------------------
    def __getitem__(self, host: str) -> RobotsRecord:
        return self._records[normalize_host(host)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, host) -> bool:
        return isinstance(host, str) and normalize_host(host) in self._records

    def get_text(self, host: str) -> str | None:
        """robots.txt text of an already normalised host, `None` if absent."""
        record = self._records.get(host)
        return None if record is None else record.text

    def add(
        self,
        host: str,
        text,
        fetched_at: str | None = None,
        status: int | None = None,
        error: str | None = None,
        *,
        base_fetched_at: str | None = None,
        masked_fetched_at: str | None = None,
        masked_status: int | None = None,
        masked_error: str | None = None,
    ) -> None:
        """Add or replace the robots.txt of `host` (`text` may be `str`, `bytes` or `None`).

        `status` is the HTTP status of the fetch and `error` the reason a fetch got no HTTP answer at all; both
        decide the host's RFC 9309 status class (see `status_counts`). The keyword arguments are the record's fetch
        history that `update_from_fetch` keeps (see `RobotsRecord`); the readers pass them back from a snapshot.
        """
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, got {type(host).__name__}.")
        key = normalize_host(host)
        if not key:
            raise ValueError(f"host {host!r} has no host name; pass e.g. 'example.com'.")
        if status is not None and not is_int(status):
            raise TypeError(f"status of {host!r} must be an int HTTP status or None, got {status!r}.")
        if status is not None:
            status = int(status)  # numpy's int64 (a DataFrame's status column) as the int every format can save
        if error is not None and not isinstance(error, str):
            raise TypeError(f"error of {host!r} must be a str or None, got {type(error).__name__}.")
        if masked_status is not None and not is_int(masked_status):
            raise TypeError(f"masked_status of {host!r} must be an int HTTP status or None, got {masked_status!r}.")
        if masked_status is not None:
            masked_status = int(masked_status)
        if masked_error is not None and not isinstance(masked_error, str):
            raise TypeError(f"masked_error of {host!r} must be a str or None, got {type(masked_error).__name__}.")
        if masked_fetched_at is None and (masked_status is not None or masked_error):
            raise ValueError(f"masked_status / masked_error of {host!r} need the masked fetch's masked_fetched_at.")
        fetched_at = _iso_date(fetched_at, host)
        base_fetched_at = _iso_date(base_fetched_at, host, "base_fetched_at")
        masked_fetched_at = _iso_date(masked_fetched_at, host, "masked_fetched_at")
        text = _decode(text, host)
        for what, value in (
            ("error", error), ("fetched_at", fetched_at), ("base_fetched_at", base_fetched_at),
            ("masked_fetched_at", masked_fetched_at), ("masked_error", masked_error),
        ):  # fmt: skip
            _refuse_surrogates(value, what, host)
        self._records[key] = RobotsRecord(
            key, text, fetched_at or self.fetched_at, status, error or None,
            base_fetched_at or None, masked_fetched_at or None, masked_status, masked_error or None,
        )  # fmt: skip
        self._version += 1

    def update_from_fetch(self, record: RobotsRecord) -> RobotsRecord:
        """Store a new fetch result for `record.host`, with RFC 9309's caching rule for unreachable files.

        A fetch that found the robots.txt *unreachable* (5xx, network error) does not replace an *available* copy
        already in the store: RFC 9309 section 2.4 lets crawlers keep using a cached copy while the file is
        unreachable, instead of falling back to complete disallow (with no age limit: section 2.4's 24 hours do not
        apply while the file is unreachable). Dated fetches give the record that applying them in date order gives,
        whatever order they come in: dates are compared as instants (`2025-01-02T01:00:00+02:00` is before
        `2025-01-01T23:30:00+00:00`; a date or a time without offset is UTC; strings that are not ISO 8601 compare
        as text, so mixed with ISO dates the order can matter again), and at one instant a 3xx/4xx or no-file result applies first, then a body, a 304, an unreachable
        fetch. So an older fetch applied later is dropped when the record was decided after it (by a body, a 3xx/4xx,
        no file), and otherwise slots in before the later 304 / unreachable fetches, which the record keeps for this
        (`RobotsRecord.base_fetched_at` and `masked_*`): 200 on Jan 1, 503 on Jan 3, then 404 on Jan 2 ends as the
        503 (unreachable), as in date order. The body of an unreachable answer is not kept. A fetch without a date (`fetched_at` `None`) is not known to be newer than a dated record, so it
        leaves one as it is, as an undated 304 does (it replaces an undated record, and a host with no record gets it,
        dated with the store's `fetched_at` as every undated record `add` stores). Every other result replaces the
        record (a 4xx means the file is gone). Returns the record now stored.

        A 304 Not Modified (status 304, no `error`) is HTTP caching's "the copy you hold is current" (RFC 9309 section
        2.4 allows standard HTTP caching, RFC 9111): an *available* copy in the store is kept, dated `record.fetched_at`
        (the copy as seen at that fetch; an older or undated 304 leaves the record as it is). A 304 without such a copy
        (no record, or one without a robots.txt text) gave no file, although it says there is one: it is recorded with
        the `error` `_NOT_MODIFIED_WITHOUT_COPY` and no status, *unreachable* as a fetch without a usable answer is
        (RFC 9309 section 2.3.1.4), never *unavailable* (allow everything), which is for a file that does not exist.
        """
        if not isinstance(record, RobotsRecord):
            raise TypeError(f"record must be a RobotsRecord, got {type(record).__name__}.")
        key = normalize_host(record.host)
        previous = self._records.get(key)
        new_date = _iso_date(record.fetched_at, record.host)
        if new_date and (previous is None or previous.fetched_at):
            # dated: the record that applying every fetch so far in date order gives, whatever order they came in
            _refuse_surrogates(new_date, "fetched_at", record.host)
            kind = _fetch_kind(record.text, record.status, record.error)
            # the body of an unreachable answer (a 5xx page) is not a robots.txt: not kept, as the fetcher keeps none
            text = None if kind in ("unreachable", "not_modified") else _decode(record.text, record.host)
            fetch = _Fetch(new_date, kind, text, record.status, record.error or None)
            history = (None, None, None) if previous is None else _history(previous)
            fields = _shown(_apply_fetch(history, fetch))
            candidate = RobotsRecord(key, **{"text": None, "status": None, "error": None, **fields})
            if candidate == previous:
                return previous
            self.add(key, **fields)
            return self._records[key]
        # an undated fetch, or one over an undated record: no order to follow
        old_date = None if previous is None else previous.fetched_at
        if record.status == 304 and not record.error:
            if previous is not None and previous.status_class == "available":
                if not new_date or _not_newer(new_date, old_date):
                    return previous
                _refuse_surrogates(new_date, "fetched_at", record.host)
                self._records[key] = replace(previous, fetched_at=new_date)
                self._version += 1
                return self._records[key]
            record = RobotsRecord(record.host, None, record.fetched_at, None, _NOT_MODIFIED_WITHOUT_COPY)
        if record.status_class == "unreachable" and previous is not None and previous.status_class == "available":
            return previous
        if previous is not None and _not_newer(new_date, old_date):
            return previous  # an older fetch than the one stored, or an undated one over a dated record
        self.add(key, record.text, record.fetched_at, record.status, record.error)
        return self._records[key]

    def status_counts(self) -> dict[str, int]:
        """Number of hosts per RFC 9309 status class: `available` (a robots.txt), `unavailable` (3xx/4xx: allow
        everything), `unreachable` (5xx or network error: disallow everything under RFC 9309) and `missing`
        (recorded without robots.txt, status unknown: allow everything)."""
        counts = dict.fromkeys(STATUS_CLASSES, 0)
        for record in self._records.values():
            counts[record.status_class] += 1
        return counts

    @classmethod
    def from_dict(cls, robots: Mapping[str, object], fetched_at: str | None = None) -> RobotsTxtStore:
        """Build from `{host: text}` (texts may be `str`, `bytes` or `None`) or `{host: RobotsRecord}`.

        Two keys that name one host (`a.com` and `A.COM:8080`, `127.0.0.1` and `0x7f.1`; see `normalize_host`) are a
        `ValueError` naming both, as in `load`: which text applies would depend on the mapping's order."""
        if not isinstance(robots, Mapping):
            raise TypeError(f"robots must be a mapping host -> robots.txt text, got {type(robots).__name__}.")
        store = cls(fetched_at=fetched_at)
        seen: dict[str, object] = {}
        for host in robots:
            key = normalize_host(host) if isinstance(host, str) else host
            if isinstance(key, str) and key in seen:
                raise ValueError(
                    f"hosts {seen[key]!r} and {host!r} are the same host {key!r}: give its robots.txt once."
                )
            seen[key] = host
        for host, text in robots.items():
            if isinstance(text, RobotsRecord):
                store.add(host, text.text, text.fetched_at, text.status, text.error, **_history_of(text))
            else:
                store.add(host, text)
        return store

    # Readers ------------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, format: str | None = None, allow_empty: bool = False) -> RobotsTxtStore:
        """Read a snapshot written by `save` (format inferred from the path when not given).

        A snapshot of no host (an empty `.jsonl`, a `.parquet` of 0 rows, a folder saved from an empty store) is a
        `ValueError`, as a folder with no snapshot files is: it opts nothing out, so a filter run on it keeps every
        document, and it is almost surely a failed or interrupted export. `allow_empty=True` loads it.

        Args:
            path (`str` or `os.PathLike`): A folder, a `.jsonl` file or a `.parquet` file.
            format (`str`, *optional*): One of `"folder"`, `"jsonl"`, `"parquet"`.
            allow_empty (`bool`, *optional*, defaults to `False`): Load a snapshot of no host as an empty store.
        """
        path = Path(path)
        fmt = format or _infer_format(path)
        if fmt not in _FORMATS:
            raise ValueError(f"format must be one of {_FORMATS}, got {fmt!r}.")
        if not path.exists():
            raise ValueError(f"robots.txt snapshot {str(path)!r} does not exist; pass a folder, .jsonl or .parquet.")
        store = cls._load_folder(path) if fmt == "folder" else cls._load_records(path, fmt)
        if not len(store) and not allow_empty:
            raise ValueError(_empty_snapshot_message(path))
        return store

    @classmethod
    def _load_records(cls, path: Path, fmt: str) -> RobotsTxtStore:
        """Read a `.jsonl` or `.parquet` snapshot (one record per host)."""
        if fmt == "jsonl":
            rows = []
            # JSON Lines are UTF-8 (a byte order mark in front, written by some Windows tools, is skipped); a byte that
            # is not is kept as its surrogate escape to name its line (read in text mode, the error would name none)
            with open(path, encoding="utf-8-sig", errors="surrogateescape") as fh:
                for lineno, line in enumerate(fh, 1):
                    bad = None if line.isascii() else _ESCAPED_BYTE.search(line)
                    if bad is not None:
                        raise ValueError(
                            f"{path}:{lineno} is not UTF-8 (byte {ord(bad.group()) - 0xDC00:#04x} at character "
                            f"{bad.start() + 1}): JSON Lines are UTF-8 (RobotsTxtStore.save writes the bytes of a "
                            "robots.txt that is not as JSON escapes); re-export the snapshot as UTF-8 JSON Lines."
                        )
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as err:
                            raise ValueError(f"{path}:{lineno} is not valid JSON ({err.msg}).") from err
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        store, seen = cls(), {}
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or "host" not in row:
                raise ValueError(f"{path}: record {i} has no 'host' field; records need host and robots_txt.")
            if "robots_txt" not in row:
                raise ValueError(
                    f"{path}: record {i} has no 'robots_txt' field (fields: {sorted(row)}); records need host and "
                    "robots_txt (null for a host without robots.txt)."
                )
            store._add_loaded(
                seen, f"{path}: record {i}", row["host"], _stored_text(row.get("robots_txt")), row.get("fetched_at"),
                _file_status(row.get("status")), row.get("error"), **_history_read(row),
            )  # fmt: skip
        return store

    @classmethod
    def _load_folder(cls, path: Path) -> RobotsTxtStore:
        """Read a folder snapshot; when a save into the folder (another process) changes its manifest while it is
        read, which can leave files of two snapshots or a file renamed away, read it again (for up to
        `_LOAD_RETRY_S` seconds): a load gives one saved snapshot, never a mix."""
        if not path.is_dir():
            raise ValueError(f"{str(path)!r} is not a folder of <host>.txt files.")
        give_up = time.monotonic() + _LOAD_RETRY_S
        while True:
            pinned = _pin_manifests(path)
            try:
                store = cls._load_folder_once(path)
            except (OSError, ValueError):
                if _manifests_unchanged(path, pinned):  # not a save under way: the folder itself is at fault
                    raise
            except BaseException:
                _manifests_unchanged(path, pinned)  # closes them
                raise
            else:
                if _manifests_unchanged(path, pinned):
                    return store
            if time.monotonic() > give_up:
                raise ValueError(
                    f"the snapshot folder {str(path)!r} was saved into again and again while it was read, for "
                    f"{_LOAD_RETRY_S} s; load it when no save is running (or save refreshed snapshots to a new path)."
                )
            time.sleep(0.02)

    @classmethod
    def _load_folder_once(cls, path: Path) -> RobotsTxtStore:
        meta = {}
        meta_file = path / _META_FILE
        staged_meta = path / _STAGED_META_FILE
        if staged_meta.is_file():  # a save that wrote everything but did not finish its renames: its snapshot
            meta_file = staged_meta
        if meta_file.is_file():
            try:
                meta = json.loads(meta_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"{meta_file} is not valid JSON ({err}); fix or delete it (it holds fetch dates and statuses)."
                ) from err
            if not isinstance(meta, dict) or not isinstance(meta.get("hosts", {}), dict):
                raise ValueError(f"{meta_file} must hold an object with 'fetched_at' and a 'hosts' object.")
        default_date = meta.get("fetched_at")
        # Keys normalised as the store's, so `A.com` in _snapshot.json applies to `a.com.txt`.
        per_host, named = {}, {}
        for host, info in meta.get("hosts", {}).items():
            if not isinstance(info, dict):
                raise ValueError(
                    f"{meta_file}: hosts[{host!r}] must hold an object with 'fetched_at', 'status', 'error' or "
                    f"'missing', got {type(info).__name__} {info!r}."
                )
            per_host[normalize_host(host)] = info
            if isinstance(info.get("file"), str):  # a host too long for `<host>.txt` (see `_host_file`)
                named[info["file"]] = host
        listed = meta.get("files")
        if isinstance(listed, list):  # written by `save`: exactly the host files of this snapshot
            files = []
            for name in listed:
                if not isinstance(name, str):
                    continue
                file = path / name
                if meta_file == staged_meta and _staged(path, name).is_file():  # not renamed yet
                    file = _staged(path, name)
                if not file.is_file():
                    if file != path / name and (path / name).is_file():  # renamed since, by a save finishing
                        file = path / name
                    else:  # `save` lists only files it has written: the folder is damaged
                        raise ValueError(
                            f"{meta_file} lists the host file {name!r}, but {str(file)!r} is missing: the snapshot "
                            "folder is incomplete (e.g. an interrupted copy); copy it again, or save the snapshot anew."
                        )
                files.append((named.get(name, Path(name).stem), file))
        else:  # a hand-made folder (or one saved before the manifest): every <host>.txt
            files = [(file.stem, file) for file in sorted(path.glob("*.txt"))]
        if not files and not meta_file.is_file():
            raise ValueError(
                f"{str(path)!r} holds no <host>.txt files and no {_META_FILE}: it is not a robots.txt snapshot "
                "folder; pass a folder written by RobotsTxtStore.save, a .jsonl or a .parquet file."
            )
        store, seen = cls(fetched_at=default_date), {}
        for host, file in files:
            info = per_host.get(normalize_host(host), {})
            try:
                data = file.read_bytes()
            except FileNotFoundError:
                if not file.name.endswith(_STAGED_SUFFIX):
                    raise
                # a save finishing its commit renamed the staged file onto its name since it was listed
                file = path / file.name[1 : -len(_STAGED_SUFFIX)]
                data = file.read_bytes()
            store._add_loaded(
                seen, str(file), host, data, info.get("fetched_at", default_date), _file_status(info.get("status")),
                info.get("error"), **_history_read(info),
            )  # fmt: skip
        for host, info in per_host.items():  # hosts recorded without a robots.txt file
            # `missing` (no robots.txt, status unknown), or a status / error saying why there is none (4xx: allow all;
            # 5xx, network error: disallow all): dropping those would allow every page of an unreachable host
            recorded = info.get("missing") or info.get("status") is not None or info.get("error")
            if normalize_host(host) not in store._records and recorded:
                status = _file_status(info.get("status"))
                store.add(
                    host, None, info.get("fetched_at", default_date), status, info.get("error"), **_history_read(info)
                )
        return store

    # Writers ------------------------------------------------------------------------------------------------------
    def _save_folder(self, path: Path) -> None:
        """Write the snapshot into the folder `path` (created if needed; through a symlink to a folder, into its
        target), all or nothing. Every `<host>.txt` (see `_host_file` for a host too long for that name) is first
        staged as `.<host>.txt.staged`, then the new manifest as `_snapshot.json.staged`, whose `files` list names the
        host files of this snapshot: once that file exists the save is complete. The staged files are then renamed onto their names, the host files the previous manifest
        listed and this one does not are removed, and the staged manifest is renamed onto `_snapshot.json`. A save
        killed before the staged manifest exists leaves the old snapshot in force (its staged files are discarded by
        the next save); one killed after it is read by `load` as the new snapshot (the staged manifest and any file
        still staged win) and finished by the next save. `load` reads only the listed files, so a reload gives exactly
        what was saved; files of the user in the folder are never read as hosts nor removed. Every text is encoded
        before the first write, so a bad record fails before the folder changes. Saves into one folder from several
        processes take turns (an exclusive `flock` on the folder), and a `load` while a save
        runs reads the folder again until its manifest stayed the same during the read: it gives the old or the new
        snapshot, never a mix."""
        from ..utils.io import atomic_open, flush_files_to_disk

        if path.exists() and not path.is_dir():
            raise ValueError(f"{str(path)!r} is a file; a folder snapshot needs a folder path (or use .jsonl/.parquet).")
        payload, hosts = {}, {}
        for r in self._records.values():
            name = _host_file(r.host)
            if r.text is not None:  # the bytes as served: a byte that is not UTF-8 is written as that byte
                payload[name] = _encode_bytes(r.text)
            info = {k: v for k, v in (("fetched_at", r.fetched_at), ("status", r.status), ("error", r.error)) if v is not None}
            info.update(_history_of(r))
            if r.text is None:
                info["missing"] = True
            elif name != f"{r.host}.txt":
                info["file"] = name
            if info:
                hosts[r.host] = info
        meta = {"fetched_at": self.fetched_at, "hosts": hosts, "files": sorted(payload)}
        meta_text = json.dumps(meta, indent=2, sort_keys=True)
        path.mkdir(parents=True, exist_ok=True)
        with _folder_lock(path):  # one save at a time: each renames and removes staged files
            _finish_staged_save(path)  # an earlier save killed after its commit point: complete it first
            for stale in path.glob(f".*.txt{_STAGED_SUFFIX}"):  # one killed before it: its staged files are void
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stale)
            # and the temporary files of a write it was killed in (`atomic_open`'s `.<name>.<8 characters>.tmp` for a
            # staged host file or the staged manifest): written under this lock, so no running save owns one
            for pattern in (f"..*.txt{_STAGED_SUFFIX}.{'?' * 8}.tmp", f".{_STAGED_META_FILE}.{'?' * 8}.tmp"):
                for stale in path.glob(pattern):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(stale)
            # the host files are staged names that no reader takes before the staged manifest exists (a save killed
            # here leaves them void), so each is written in place, and all of them are made durable with one flush
            # before the manifest: an atomic_open (temporary file, fsync, rename) per host took ~10 ms each
            written = []
            try:
                for name, data in payload.items():
                    staged = _staged(path, name)
                    written.append(str(staged))
                    with open(staged, "wb") as fh:
                        fh.write(data)
                flush_files_to_disk(written)
            except BaseException:
                for staged in written:  # nothing half-written is left behind
                    with contextlib.suppress(OSError):
                        os.remove(staged)
                raise
            with atomic_open(str(path / _STAGED_META_FILE), "w") as fh:  # the commit point
                fh.write(meta_text)
            _finish_staged_save(path)

    def save(self, path: str | os.PathLike, format: str | None = None) -> Path:
        """Write the snapshot as a folder, `.jsonl` or `.parquet` (format inferred from the path when not given)."""
        path = Path(path)
        fmt = format or _infer_format(path)
        if fmt not in _FORMATS:
            raise ValueError(f"format must be one of {_FORMATS}, got {fmt!r}.")
        if fmt != "folder" and path.is_dir():  # e.g. a Parquet dataset folder: a file cannot replace it
            raise ValueError(
                f"{str(path)!r} is a folder; a {fmt} snapshot is written as one file: pass another path (or "
                "format='folder' to save a folder snapshot into it)."
            )
        from ..utils.io import atomic_open

        rows = [
            {"host": r.host, "robots_txt": r.text, "fetched_at": r.fetched_at, "status": r.status, "error": r.error}
            | _history_of(r)  # only the fields that are set: a store without fetch history is written as before
            for r in self._records.values()
        ]
        # Every file is written to a temporary name and renamed: an interrupted save never leaves a torn file.
        if fmt == "folder":
            self._save_folder(path)
        elif fmt == "jsonl":
            with atomic_open(str(path), "w") as fh:
                for row in rows:
                    # a text that is not UTF-8: its bytes that are not as JSON escapes `\udcXX` (json.loads reads
                    # back the surrogate escapes), as UTF-8 cannot write them
                    fh.write(json.dumps(row, ensure_ascii=not _is_utf8(row["robots_txt"])) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            # a Parquet string must be UTF-8: when a text is not, the column holds every text's bytes as served
            if not all(_is_utf8(row["robots_txt"]) for row in rows):
                for row in rows:
                    if row["robots_txt"] is not None:
                        row["robots_txt"] = _encode_bytes(row["robots_txt"])
                text_type = pa.binary()
            else:
                text_type = pa.string()
            schema = pa.schema(
                [
                    ("host", pa.string()),
                    ("robots_txt", text_type),
                    ("fetched_at", pa.string()),
                    ("status", pa.int64()),
                    ("error", pa.string()),
                ]
            )
            if any(_history_of(r) for r in self._records.values()):  # the history columns only when a record has one
                for name in _HISTORY_FIELDS:
                    schema = schema.append(pa.field(name, pa.int64() if name == "masked_status" else pa.string()))
                    for row in rows:
                        row.setdefault(name, None)
            with atomic_open(str(path), "wb") as fh:
                pq.write_table(pa.Table.from_pylist(rows, schema=schema), fh)
        return path


def _history_of(record: RobotsRecord) -> dict:
    """The fetch-history fields of `record` that are set (see `RobotsRecord`)."""
    return {name: getattr(record, name) for name in _HISTORY_FIELDS if getattr(record, name) is not None}


def _history_read(info: Mapping) -> dict:
    """The fetch-history fields of a snapshot row or folder entry (absent in snapshots written before 2026-12-06)."""
    history = {name: info.get(name) for name in _HISTORY_FIELDS if info.get(name) is not None}
    if "masked_status" in history:
        history["masked_status"] = _file_status(history["masked_status"])
    return history


def _file_status(value):
    """A snapshot file's `status` as `add` takes it: a whole float (`404.0`) is that int and NaN is `None`. A status
    column with a missing value is float64 in pandas, so a snapshot written with `DataFrame.to_parquet` / `to_json`
    holds `200.0` and null (or NaN) where a fetch recorded 200 and no status; anything else is left for `add` to
    check."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    return value


def _iso_date(value, host, what: str = "fetched_at"):
    """A fetch date as an ISO string: `str` and `None` as given, a `datetime` / `date` (what pandas and Parquet
    timestamp columns hold) in ISO format; anything else is refused, naming the field (`what`) and the host."""
    import datetime as dt

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dt.date):  # also datetime
        return value.isoformat()
    raise TypeError(
        f"{what} of {host!r} must be an ISO date string, a datetime or None, got {type(value).__name__} {value!r}."
    )


def _as_utc(value: str):
    """An ISO date or datetime string as an aware UTC datetime (a date is its midnight, a naive time is UTC), or
    `None` when it does not parse."""
    import datetime as dt

    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _not_newer(new: str | None, old: str | None) -> bool:
    """Whether a fetch dated `new` leaves a stored record dated `old` as it is: the record is dated and the fetch is
    dated before it, or has no date (an undated fetch is not known to be newer than a dated record)."""
    return bool(old) and (not new or _fetched_before(new, old))


def _fetched_before(new: str, old: str) -> bool:
    """Whether fetch date `new` is before `old`: compared as instants (offsets applied; no offset means UTC), or as
    strings when either does not parse as ISO 8601."""
    new_dt, old_dt = _as_utc(new), _as_utc(old)
    if new_dt is None or old_dt is None:
        return new < old
    return new_dt < old_dt


def _empty_snapshot_message(path: Path) -> str:
    return (
        f"robots.txt snapshot {str(path)!r} holds no robots.txt records (0 hosts): it opts nothing out, so filtering "
        "by it would keep every document; it is most likely a failed or interrupted export. Pass a snapshot with "
        "hosts (written by RobotsTxtStore.save or fetch_robots_txt), or load it with "
        "RobotsTxtStore.load(path, allow_empty=True) if it is meant to be empty."
    )


def snapshot_is_empty(path: str | os.PathLike) -> bool:
    """Whether the snapshot at `path` holds no record, found without reading it whole (for a check at the start of a
    run that loads it later): a `.jsonl` file with no non-blank line, a `.parquet` file of 0 rows, or a folder whose
    manifest lists no host file and no host and that holds no `<host>.txt` file. A snapshot this cannot tell (a
    malformed file) counts as not empty: `RobotsTxtStore.load` says what is wrong with it."""
    path = Path(path)
    try:
        fmt = _infer_format(path)
        if fmt == "jsonl":
            with open(path, encoding="utf-8-sig") as fh:
                return not any(line.strip() for line in fh)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows == 0
        if any(path.glob("*.txt")):
            return False
        for name in (_STAGED_META_FILE, _META_FILE):
            if (path / name).is_file():
                meta = json.loads((path / name).read_text(encoding="utf-8"))
                return isinstance(meta, dict) and not meta.get("files") and not meta.get("hosts")
        return False  # no manifest and no host file: `load` refuses it as not a snapshot folder
    except (OSError, ValueError):  # also pyarrow's ArrowInvalid for a file that is not Parquet
        return False


def _infer_format(path: Path) -> str:
    """The snapshot format a path names by its extension, in any letter case (`SNAP.JSONL` is JSON Lines); an existing
    folder is a folder snapshot whatever its name (`robots.JSONL/`), except a `.parquet` folder of Parquet part files
    and no snapshot files (a Parquet file as Spark, Dask or `pyarrow.parquet.write_to_dataset` write it), which
    pyarrow reads as one table."""
    suffix = path.suffix.lower()
    if path.is_dir():
        snapshot = any(path.glob("*.txt")) or any((path / name).is_file() for name in (_META_FILE, _STAGED_META_FILE))
        if suffix == ".parquet" and not snapshot and any(path.rglob("*.parquet")):
            return "parquet"
        return "folder"
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix == "":
        return "folder"
    raise ValueError(
        f"cannot infer the snapshot format of {str(path)!r} from its extension: pass a folder, a .jsonl or a .parquet "
        "file (RobotsTxtStore.load and save also take format='folder', 'jsonl' or 'parquet')."
    )


def record_from_response(
    host: str, status: int | None, body: bytes | None, fetched_at: str, error: str | None = None
) -> RobotsRecord:
    """Turn one fetch result into a record.

    2xx: the body (its first 500 KiB, without a last line the limit cuts: pass one byte more to tell) is the
    robots.txt. Any other status is recorded with no body; what it means is decided when the snapshot is used
    (`RobotsCompliance(status_policy=...)`): under RFC 9309, 3xx/4xx are *unavailable* (allow everything) and 5xx
    *unreachable* (disallow everything). A fetch without an HTTP answer records `error` (unreachable as well). A 304
    Not Modified is recorded with status 304 for `RobotsTxtStore.update_from_fetch`, which keeps the stored copy it
    confirms (or records an error when there is none). `status` is an int (what `http.client` and `HTTPError.code`
    give) or `None`; another type (a string "200", a float, a bool) is a `TypeError`, as in `RobotsTxtStore.add`.
    """
    if status is not None and not is_int(status):
        raise TypeError(
            f"status of {host!r} must be an int HTTP status or None, got {status!r} ({type(status).__name__}); "
            "pass e.g. int(status)."
        )
    if status is not None:
        status = int(status)  # numpy's int64 as the int every snapshot format can save
    ok = status is not None and 200 <= status < 300 and body is not None
    if ok:  # the first 500 KiB, as the parser reads a longer body
        body = _without_cut_line(body[:MAX_ROBOTS_BYTES], body[MAX_ROBOTS_BYTES : MAX_ROBOTS_BYTES + 1])
    text = _decode(body) if ok else None
    if status is None and error is None and body is None:
        error = "no response"
    return RobotsRecord(normalize_host(host), text, fetched_at, status, error)


def _short_read(body: bytes, content_length: str | None) -> str | None:
    """Why `body` is not the whole robots.txt (fewer bytes than its `Content-Length` header announced, and fewer than
    the 500 KiB that are read), or `None`."""
    try:
        expected = int(content_length) if content_length is not None else None
    except ValueError:
        return None
    if expected is None or len(body) >= min(expected, MAX_ROBOTS_BYTES):
        return None
    return f"IncompleteRead: the connection closed after {len(body)} of {expected} bytes"


_RAW_CHUNK = 64 * 1024
# A compressed body is read up to this many bytes (a 500 KiB file stored without compression is a little larger when
# "compressed"); one longer that still decodes to less than the 500 KiB is refused rather than cut anywhere.
_MAX_COMPRESSED_BYTES = 2 * MAX_ROBOTS_BYTES + _RAW_CHUNK
_GZIP_CODINGS = ("gzip", "x-gzip")


class _BodyError(Exception):
    """A 2xx body that is not the robots.txt as sent (an undecodable content coding, a stream cut short)."""


def _content_codings(header: str | None) -> list[str]:
    """The content codings of a `Content-Encoding` header, in the order they were applied (`identity` left out)."""
    codings = [c.strip().lower() for c in (header or "").split(",")]
    return [c for c in codings if c and c != "identity"]


def _decoded_body(read, coding: str, limit: int, content_length: str | None) -> bytes:
    """The first `limit` bytes of a body sent with the content coding `coding` (`gzip`, `x-gzip` or `deflate`: zlib
    format, or raw deflate as some servers send it), read with `read(n)`: at most `limit` bytes are decompressed (a
    small compressed body can decode to gigabytes) and at most `_MAX_COMPRESSED_BYTES` read. A coding it cannot
    decode, data that is not in that coding, or a stream cut short is a `_BodyError`."""
    import zlib

    if coding not in (*_GZIP_CODINGS, "deflate"):
        raise _BodyError(f"the body has Content-Encoding {coding!r}, which is not decoded (gzip and deflate are)")
    out, data, raw_total, decoder, members = bytearray(), b"", 0, None, 0
    while len(out) < limit:
        if not data:
            data = read(_RAW_CHUNK)
            if not data:
                break
            raw_total += len(data)
            if raw_total > _MAX_COMPRESSED_BYTES:
                raise _BodyError(
                    f"the {coding} body is over {_MAX_COMPRESSED_BYTES} bytes and decodes to less than 500 KiB"
                )
        if decoder is None:
            if members and not data.strip(b"\0"):  # zero padding after the last gzip member, as gzip accepts
                data = b""
                continue
            if coding == "deflate":  # zlib format (RFC 9110), else raw deflate
                zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
                wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
            else:
                wbits = 16 + zlib.MAX_WBITS
            decoder = zlib.decompressobj(wbits)
        try:
            out += decoder.decompress(data, limit - len(out))
        except zlib.error as err:
            raise _BodyError(f"the body is not valid {coding} data ({err})") from None
        data = decoder.unconsumed_tail
        if decoder.eof:
            data, decoder, members = decoder.unused_data + data, None, members + 1
            if coding == "deflate" and data.strip(b"\0"):
                raise _BodyError("the deflate body has data after its end")
    if len(out) < limit and raw_total:  # the whole body was read: complete? (an empty body is an empty file)
        if decoder is not None or not members:
            raise _BodyError(f"the {coding} stream is cut short after {raw_total} bytes")
        with contextlib.suppress(TypeError, ValueError):
            if raw_total < int(content_length):
                raise _BodyError(f"the connection closed after {raw_total} of {content_length} bytes")
    return bytes(out)


class _Deadline:
    """A wall-clock limit on one fetch: when it passes, every socket the fetch opened is shut down (a blocked read
    then returns at once) and `passed` is set, so a fetch is never longer than `seconds`, however slowly a server
    answers (connecting, redirects, headers and body together; the name lookup is not covered)."""

    def __init__(self, seconds: float):
        import threading

        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.passed = False
        self._done = False
        self._sockets: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(self.end - time.monotonic(), 0.001)

    def watch(self, sock):
        with self._lock:
            self._sockets.append(sock)
            if self.passed:
                self._shut(sock)
        return sock

    @staticmethod
    def _shut(sock) -> None:
        import socket

        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: also under a TLS wrapper

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.passed = True
            for sock in self._sockets:
                self._shut(sock)

    def finish(self) -> bool:
        """Stop the timer; whether the limit passed before the fetch was over."""
        with self._lock:
            self._done = True
        self._timer.cancel()
        return self.passed


def _open_url(request, deadline: _Deadline):
    """`urllib.request.urlopen(request)`, with every connection it makes (redirects too) watched by `deadline`.

    Only HTTP and HTTPS are opened: the opener has no FTP, file or data handler (`build_opener` adds them), and a
    redirect to any other scheme (`ftp://`, `file://`, `data:`) is not followed but raises `HTTPError` with the
    redirect's status, as a redirect loop or too many redirects do: the robots.txt is then *unavailable* (RFC 9309
    section 2.3.1.2), never read from another protocol on a connection the deadline does not watch.
    """
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    def watched(http_class):
        class Connection(http_class):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.timeout = deadline.remaining()

                def create_connection(address, timeout=None, *rest, **kw):
                    return deadline.watch(socket.create_connection(address, deadline.remaining(), *rest, **kw))

                self._create_connection = create_connection

            def connect(self):
                super().connect()
                # under TLS the connected socket is replaced by its wrapper (the plain one is detached): watch that too
                deadline.watch(self.sock)

        return Connection

    class HTTP(urllib.request.HTTPHandler):
        def do_open(self, http_class, req, **kwargs):
            return super().do_open(watched(http_class), req, **kwargs)

    class HTTPS(urllib.request.HTTPSHandler):
        def do_open(self, http_class, req, **kwargs):
            return super().do_open(watched(http_class), req, **kwargs)

    class Redirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            scheme = urllib.parse.urlsplit(newurl).scheme.lower()
            if scheme not in ("http", "https"):
                why = f"{msg} - a redirect to a {scheme}: URL is not followed (only http and https are)"
                raise urllib.error.HTTPError(newurl, code, why, headers, fp)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.OpenerDirector()
    handlers = (urllib.request.ProxyHandler, urllib.request.UnknownHandler, HTTP, HTTPS, Redirect)
    for handler in (*handlers, urllib.request.HTTPDefaultErrorHandler, urllib.request.HTTPErrorProcessor):
        opener.add_handler(handler())
    return opener.open(request, timeout=deadline.remaining())


def _port(name: str, i: int) -> int | None:
    """The port `hosts[i]` names (`host:8080`, `http://host:8080/x`, `[::1]:8080`), or `None`: also for a URL that
    names its own scheme's default port (`https://host:443/`, `http://host:80/`), which is the port `scheme` implies
    (fetching `https://host:443/` with `scheme="http"` would ask an HTTP question on the TLS port)."""
    from .rfc9309 import authority_start

    text = name.replace("\t", "").replace("\n", "").replace("\r", "").strip()
    start = authority_start(text)
    default = {"http:": 80, "https:": 443}.get(text[:start].partition("//")[0].lower())
    text = text[start:]
    for sep in "/?#\\":
        text = text.partition(sep)[0]
    host = text.rpartition("@")[2]
    if host.startswith("["):
        port = host.partition("]")[2].removeprefix(":")
    elif host.count(":") == 1:
        port = host.partition(":")[2]
    else:  # no port, or a bare IPv6 address
        return None
    if not port:
        return None
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"hosts[{i}] = {name!r} has the port {port!r}, which is not a port number (1 to 65535).")
    return None if int(port) == default else int(port)


def fetch_robots_txt(
    hosts: Iterable[str],
    user_agent: str,
    delay_s: float = 1.0,
    timeout_s: float = 10.0,
    scheme: str = "https",
    store: RobotsTxtStore | None = None,
) -> RobotsTxtStore:
    """Politely fetch `robots.txt` for `hosts` (sequentially, `delay_s` between requests) into a snapshot.

    Nothing in `hf_ext` calls this on its own: it is for users building their own snapshot.

    Args:
        hosts (`Iterable[str]`): Host names to fetch (or URLs, whose host is taken). A host with a port
            (`host:8080`) is fetched on that port and stored under the host (store keys have no port: RFC 9309
            applies a file to its port, so fetch each host on the port its documents use, and one port per host). A
            URL's own scheme's default port (`https://host:443/`) is not kept: the fetch uses `scheme`'s.
        user_agent (`str`): The `User-Agent` header identifying your crawler (required; be honest).
        delay_s (`float`, *optional*, defaults to 1.0): Pause between requests.
        timeout_s (`float`, *optional*, defaults to 10.0): Limit on each host's whole fetch (connecting, redirects,
            the answer and its body together, not each socket read: a server that trickles its answer is cut off
            at `timeout_s` and recorded unreachable; the DNS lookup is not covered).
        scheme (`str`, *optional*, defaults to `"https"`): URL scheme.
        store (`RobotsTxtStore`, *optional*): Add to this store instead of a new one (a refetch that finds a host
            unreachable keeps the copy already stored, and one answered 304 Not Modified keeps it with the new date;
            see `RobotsTxtStore.update_from_fetch`). The requests are not conditional (no `If-Modified-Since` or
            `If-None-Match`), so a 304 comes only from a server or cache that answers one unasked.

    Redirects are followed between `http` and `https` only. A redirect to another scheme (`ftp://`, `file://`,
    `data:`) is not followed, like a redirect loop or more than 10 redirects: the record keeps the redirect's status
    and no text, *unavailable* (RFC 9309 section 2.3.1.2).

    A fetch without a complete HTTP answer is recorded with an `error` (RFC 9309 section 2.3.1.4: unreachable): a
    network error or timeout, an answer that is not HTTP, or a body the connection cut short of its
    `Content-Length` (before the 500 KiB that are read). IPv6 hosts are fetched at `scheme://[address]/robots.txt`.

    The request asks for no content coding (`Accept-Encoding: identity`); a body a server sends gzip- or
    deflate-encoded anyway (pre-compressed static files) is decoded (its first 500 KiB), as Google's crawler does.
    A body in a coding that is not decoded (`br`, `zstd`), or not valid in its coding, is not a file the rules could
    be read from: it is recorded with an `error`, as unreachable (RFC 9309 section 2.3.1.4; disallow everything under
    `status_policy="rfc9309"`, and an available copy already in `store` is kept), never stored as text.
    """
    import http.client
    import urllib.error
    import urllib.request
    from datetime import datetime

    if not isinstance(user_agent, str) or not user_agent.strip():
        raise ValueError("user_agent must name your crawler, e.g. 'my-corpus-builder/1.0 (+https://example.org)'.")
    for name, value in (("delay_s", delay_s), ("timeout_s", timeout_s)):
        if not is_real(value) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of seconds, got {value!r}.")
    delay_s, timeout_s = float(delay_s), float(timeout_s)  # numpy numbers too (urllib wants a float timeout)
    if delay_s < 0 or timeout_s <= 0:
        raise ValueError("delay_s must be >= 0 and timeout_s > 0.")
    if scheme not in ("http", "https"):
        raise ValueError(f"scheme must be 'http' or 'https', got {scheme!r}.")
    if store is not None and not isinstance(store, RobotsTxtStore):
        raise TypeError(f"store must be a RobotsTxtStore or None, got {type(store).__name__}.")
    if isinstance(hosts, (str, bytes)):
        raise TypeError(f"hosts must be an iterable of host names, got a single {type(hosts).__name__}; pass [{hosts!r}].")
    names = list(hosts)
    hosts = []
    for i, name in enumerate(names):  # every entry checked before the first request: nothing fetched is then lost
        if not isinstance(name, str):
            raise TypeError(f"hosts[{i}] must be a str, got {type(name).__name__}.")
        host = normalize_host(name)
        if not host:
            raise ValueError(
                f"hosts[{i}] = {name!r} has no host name; remove it (e.g. the empty entry a file's final newline "
                "leaves after split('\\n')) or pass e.g. 'example.com'."
            )
        hosts.append((host, _port(name, i)))
    store = store if store is not None else RobotsTxtStore()
    for i, (host, port) in enumerate(hosts):
        if i and delay_s:
            time.sleep(delay_s)
        authority = f"[{host}]" if ":" in host else host  # an IPv6 literal (normalised without its brackets)
        if port is not None:
            authority += f":{port}"
        request = urllib.request.Request(
            f"{scheme}://{authority}/robots.txt", headers={"User-Agent": user_agent, "Accept-Encoding": "identity"}
        )
        now = datetime.now(UTC).isoformat(timespec="seconds")
        deadline = _Deadline(timeout_s)
        try:
            with _open_url(request, deadline) as response:
                codings = _content_codings(response.headers.get("Content-Encoding"))
                length = response.headers.get("Content-Length")
                if len(codings) > 1:
                    raise _BodyError(f"the body has the content codings {codings}; one gzip or deflate is decoded")
                if codings:
                    body = _decoded_body(response.read, codings[0], MAX_ROBOTS_BYTES + 1, length)
                    short = None
                else:
                    body = response.read(MAX_ROBOTS_BYTES + 1)  # one byte more: whether the limit cuts a line
                    short = _short_read(body, length)
                if short:  # the connection closed early: a part of the file is not the file
                    record = record_from_response(host, None, None, now, error=short)
                else:
                    record = record_from_response(host, response.status, body, now)
        except urllib.error.HTTPError as err:
            record = record_from_response(host, err.code, None, now)
        except _BodyError as err:
            record = record_from_response(host, None, None, now, error=f"UndecodableBody: {err}")
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            # no HTTP answer (network error, timeout, a server that does not speak HTTP): RFC 9309 2.3.1.4 unreachable
            record = record_from_response(host, None, None, now, error=f"{type(err).__name__}: {err}")
        if deadline.finish():  # what the cut-off connection left is not the answer
            record = record_from_response(
                host, None, None, now, error=f"TimeoutError: no complete answer within timeout_s={timeout_s:g} s"
            )
        store.update_from_fetch(record)
    return store


def load_example_robots() -> RobotsTxtStore:
    """The example robots.txt snapshot shipped with hf_ext for the hosts of the embedded corpus.

    It exercises wildcards and `$`, Allow/Disallow precedence, agent groups, a non-AI-only block, a malformed file
    and a host without a robots.txt.
    """
    return RobotsTxtStore.load(Path(__file__).parent / "examples")
