"""Embedded offline corpus built from text that ships with every CPython installation.

Documents come from two sources, both read without importing anything and without network access:

* the interpreter's help topics (``pydoc_data.topics``), domain ``language``;
* docstrings of standard-library modules, parsed with :mod:`ast` from their source files, one document per module
  docstring and one per public class or function with a substantial docstring.

Each module belongs to one named area of the standard library (its ``domain``). URLs are docs-style and stable; the
host is per domain (``https://<domain>.docs.python.org/3/library/<module>.html#<anchor>``) so that per-host tools
(robots.txt rules, URL conditioning) have several hosts to work with.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import sys
import sysconfig
from pathlib import Path

from .utils import cache_dir, writable_cache_subdir

logger = logging.getLogger(__name__)

CORPUS_VERSION = 1

#: Standard-library modules per domain. Modules absent from an installation are skipped.
DOMAIN_MODULES: dict[str, tuple[str, ...]] = {
    "text": ("string", "re", "textwrap", "unicodedata", "difflib", "codecs", "stringprep", "shlex", "gettext", "locale"),
    "datatypes": (
        "collections", "collections.abc", "datetime", "calendar", "enum", "heapq", "bisect", "array", "copy",
        "dataclasses", "functools", "itertools", "operator", "weakref", "types", "graphlib", "reprlib",
    ),
    "numeric": ("math", "decimal", "fractions", "random", "statistics", "numbers", "_pydecimal", "_pydatetime"),
    "filesystem": (
        "os", "pathlib", "shutil", "glob", "tempfile", "io", "_pyio", "zipfile", "tarfile", "gzip", "bz2", "lzma",
        "fnmatch", "filecmp", "fileinput", "stat", "ntpath", "posixpath", "genericpath", "linecache", "zipapp",
    ),
    "concurrency": (
        "threading", "multiprocessing.pool", "multiprocessing.process", "multiprocessing.queues",
        "multiprocessing.managers", "multiprocessing.connection", "multiprocessing.synchronize", "queue",
        "subprocess", "sched", "concurrent.futures._base", "concurrent.futures.thread", "concurrent.futures.process",
        "asyncio.events", "asyncio.tasks", "asyncio.streams", "asyncio.locks", "asyncio.queues", "asyncio.futures",
        "asyncio.base_events", "asyncio.subprocess", "asyncio.runners", "contextvars", "selectors",
    ),
    "networking": (
        "socket", "ssl", "http.client", "http.server", "http.cookies", "http.cookiejar", "urllib.request",
        "urllib.parse", "urllib.robotparser", "urllib.error", "email.message", "email.parser", "email.utils",
        "email.headerregistry", "email.policy", "smtplib", "ftplib", "imaplib", "poplib", "ipaddress",
        "socketserver", "xmlrpc.client", "xmlrpc.server", "mimetypes", "wsgiref.simple_server", "webbrowser",
    ),
    "data_formats": (
        "json", "json.decoder", "json.encoder", "csv", "pickle", "pickletools", "configparser", "tomllib._parser",
        "html", "html.parser", "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax.saxutils", "xml.sax.handler",
        "plistlib", "base64", "binascii", "quopri", "uu", "struct", "shelve", "dbm", "netrc", "mailbox", "hashlib",
        "hmac", "secrets", "uuid",
    ),
    "devtools": (
        "unittest.case", "unittest.mock", "unittest.loader", "unittest.runner", "doctest", "pdb", "bdb",
        "logging", "logging.handlers", "logging.config", "argparse", "optparse", "getopt", "typing", "inspect",
        "dis", "ast", "timeit", "trace", "cProfile", "profile", "pstats", "warnings", "traceback", "tokenize",
        "importlib._bootstrap", "importlib.metadata", "importlib.resources._common", "pkgutil", "pydoc",
        "contextlib", "abc", "atexit", "code", "codeop", "compileall", "py_compile", "tracemalloc", "sysconfig",
    ),
}

MIN_DOC_CHARS = 200
HOLDOUT_FRACTION = 0.05


def _module_path(stdlib: Path, module: str) -> Path | None:
    parts = module.split(".")
    as_file = stdlib.joinpath(*parts).with_suffix(".py")
    if as_file.is_file():
        return as_file
    as_pkg = stdlib.joinpath(*parts, "__init__.py")
    if as_pkg.is_file():
        return as_pkg
    return None


def _clean(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return "\n".join(lines).strip()


def _documents_from_module(module: str, path: Path, domain: str) -> list[dict]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    host = f"https://{domain.replace('_', '-')}.docs.python.org/3/library/{module}.html"
    docs = []
    module_doc = ast.get_docstring(tree, clean=True)
    if module_doc and len(module_doc) >= MIN_DOC_CHARS // 2:
        docs.append({"text": _clean(module_doc), "url": host, "domain": domain, "source": f"module:{module}"})
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or node.name.startswith("_"):
            continue
        pieces = []
        doc = ast.get_docstring(node, clean=True)
        if doc:
            pieces.append(doc)
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and not sub.name.startswith("_"):
                    sub_doc = ast.get_docstring(sub, clean=True)
                    if sub_doc:
                        pieces.append(f"{sub.name}: {sub_doc}")
        text = _clean("\n\n".join(pieces))
        if len(text) >= MIN_DOC_CHARS:
            docs.append(
                {"text": text, "url": f"{host}#{module}.{node.name}", "domain": domain, "source": f"{module}.{node.name}"}
            )
    return docs


def _topic_documents() -> list[dict]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - some distributions strip pydoc_data
        return []
    docs = []
    for name in sorted(topics):
        text = _clean(topics[name])
        if len(text) >= MIN_DOC_CHARS:
            docs.append(
                {
                    "text": text,
                    "url": f"https://language.docs.python.org/3/reference/topics.html#{name}",
                    "domain": "language",
                    "source": f"topic:{name}",
                }
            )
    return docs


def build_corpus_records() -> list[dict]:
    """Build the corpus as a list of ``{"text", "url", "domain", "source", "split"}`` records (deterministic)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    records = _topic_documents()
    for domain in sorted(DOMAIN_MODULES):
        for module in DOMAIN_MODULES[domain]:
            path = _module_path(stdlib, module)
            if path is not None:
                records.extend(_documents_from_module(module, path, domain))
    seen: set[str] = set()
    unique = []
    for rec in records:
        if rec["url"] in seen or rec["text"] in seen:
            continue
        seen.add(rec["url"])
        seen.add(rec["text"])
        digest = int(hashlib.sha256(rec["url"].encode()).hexdigest()[:8], 16)
        rec["split"] = "test" if digest / 0xFFFFFFFF < HOLDOUT_FRACTION else "train"
        unique.append(rec)
    return unique


def _corpus_cache_file() -> Path:
    tag = f"v{CORPUS_VERSION}-py{sys.version_info.major}{sys.version_info.minor}"
    return cache_dir() / "corpus" / f"stdlib-docs-{tag}.jsonl"


#: key of the cache file's last line, written after every record: `{"records": N, "sha256": <of the record lines>}`
_TRAILER_KEY = "__hf_ext_corpus_cache__"


def _record_lines(records: list[dict]) -> list[str]:
    return [json.dumps(rec, ensure_ascii=False) + "\n" for rec in records]


def _trailer(lines: list[str]) -> str:
    digest = hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
    return json.dumps({_TRAILER_KEY: {"records": len(lines), "sha256": digest}}) + "\n"


def _read_cache(path: Path) -> list[dict] | None:
    """Records from the corpus cache file, or `None` (with a warning) if the file is empty, truncated or corrupt.

    The file ends with a trailer line holding the record count and a SHA-256 of the record lines, written last: a
    file cut anywhere (even at a line boundary) or edited fails the check. A cache written before the trailer
    existed is rebuilt once."""
    needed = {"text", "url", "domain", "source", "split"}
    try:
        with path.open(encoding="utf-8") as fh:
            lines = [line for line in fh if line.strip()]
        if not lines:
            raise ValueError("empty")
        trailer = json.loads(lines[-1])
        meta = trailer.get(_TRAILER_KEY) if isinstance(trailer, dict) else None
        if not isinstance(meta, dict):
            raise ValueError("no record count at its end (truncated, or written by an older hf_ext)")
        lines = lines[:-1]
        if meta.get("records") != len(lines):
            raise ValueError(f"{len(lines)} records where its trailer records {meta.get('records')!r} (truncated)")
        if json.loads(_trailer(lines)) != trailer:
            raise ValueError("its records do not match the trailer's checksum (corrupt or edited)")
        records = [json.loads(line) for line in lines]
        if not records or any(not isinstance(r, dict) or not needed <= set(r) for r in records):
            raise ValueError("empty, or records without the text/url/domain/source/split fields")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        logger.warning("The corpus cache %s is unusable (%s); rebuilding it.", path, err)
        return None
    return records


#: A temporary cache file (`<cache name>.tmp<pid>`) older than this is the leftover of a killed build: the write takes
#: well under a second, so a younger one may still be another process's write in progress and is left alone.
_STALE_TMP_SECONDS = 600


def _remove_stale_tmp_files(folder: Path) -> None:
    """Remove the temporary cache files a killed corpus build left in `folder` (never read; each holds a whole copy of
    the corpus), of any corpus or Python version."""
    import time

    now = time.time()
    for stale in folder.glob("stdlib-docs-*.tmp[0-9]*"):
        try:
            if stale.is_file() and now - stale.stat().st_mtime > _STALE_TMP_SECONDS:
                stale.unlink()
        except OSError:  # removed by another process meanwhile, or not ours to remove: leave it
            pass


def _load_records() -> list[dict]:
    path = _corpus_cache_file()
    if path.parent.is_dir():
        _remove_stale_tmp_files(path.parent)
    if path.is_file():
        cached = _read_cache(path)
        if cached is not None:
            return cached
    writable_cache_subdir(path.parent)  # an unwritable cache is named before the corpus is built
    records = build_corpus_records()
    if not records:
        raise RuntimeError("The embedded corpus came out empty: the Python standard library sources were not found.")
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    lines = _record_lines(records)
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(lines)
            fh.write(_trailer(lines))  # last: a file cut short has no (or a wrong) trailer
        os.replace(tmp, path)
    except BaseException:  # a failed or interrupted write (disk full, Ctrl-C) leaves no stray copy in the cache
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return records


def load_corpus(split: str | None = "train", domains: list[str] | None = None):
    """Load the embedded corpus as a `datasets.Dataset` (or `DatasetDict` when ``split=None``).

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            `"train"`, `"test"` (the held-out ~5%), or `None` for a `DatasetDict` with both.
        domains (`list[str]`, *optional*):
            Keep only these domains (see `corpus_domains()`); an empty list is refused (it would select nothing).

    Returns:
        A dataset with columns `text`, `url`, `domain` and `source`, in a fixed order.
    """
    from datasets import Dataset, DatasetDict

    if split not in ("train", "test", None):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}.")
    known = corpus_domains()
    if isinstance(domains, str):
        raise TypeError(f"domains must be a list of domain names, got the string {domains!r}; pass [{domains!r}].")
    if domains is not None:
        if not domains:
            raise ValueError(f"domains is empty, which would select no document; pass None for all, or names from {known}.")
        unknown = sorted(set(domains) - set(known))
        if unknown:
            raise ValueError(f"domains contains unknown names {unknown}; choose from {known}.")
    records = _load_records()
    if domains is not None:
        records = [r for r in records if r["domain"] in set(domains)]

    def make(part: str) -> Dataset:
        rows = [r for r in records if r["split"] == part]
        return Dataset.from_dict({k: [r[k] for r in rows] for k in ("text", "url", "domain", "source")})

    if split is None:
        return DatasetDict({"train": make("train"), "test": make("test")})
    return make(split)


def corpus_domains() -> list[str]:
    """Names of the corpus domains, sorted."""
    return sorted({"language", *DOMAIN_MODULES})
