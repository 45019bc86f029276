"""Corpus cache: an interrupted build leaves no stray temporary file (lo42).

`_load_records` writes the cache to `<cache name>.tmp<pid>` and renames it onto the cache file. A write that failed
or was interrupted (disk full, Ctrl-C) left that file, a whole copy of the corpus that is never read, in
`<HF_EXT_CACHE>/corpus/` for good, and a killed build's one stayed as well. Now a failed write removes its own
temporary file, and a later load removes a leftover older than `_STALE_TMP_SECONDS` (a younger one may be another
process's write in progress).
"""

from __future__ import annotations

import os
import time

import pytest


@pytest.fixture
def records():
    from hf_ext.data import corpus

    return corpus._load_records()


def test_an_interrupted_write_removes_its_temporary_file(tmp_path, monkeypatch, records):
    from hf_ext.data import corpus, load_corpus

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "build_corpus_records", lambda: [dict(r) for r in records])

    def interrupted(lines):
        raise KeyboardInterrupt  # Ctrl-C after the records were written, before the trailer

    monkeypatch.setattr(corpus, "_trailer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_corpus("train")
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == []  # before: stdlib-docs-...tmp<pid>
    monkeypatch.undo()
    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    assert len(load_corpus("train")) > 0
    assert [p.name for p in (tmp_path / "corpus").iterdir()] == [corpus._corpus_cache_file().name]


def test_a_killed_builds_leftover_is_removed_by_a_later_load(tmp_path, monkeypatch, records):
    from hf_ext.data import corpus, load_corpus

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "build_corpus_records", lambda: [dict(r) for r in records])
    n = len(load_corpus("train"))  # a complete cache
    folder = tmp_path / "corpus"
    old = folder / "stdlib-docs-v1-py311.tmp12345"  # a build killed an hour ago (any corpus / Python version)
    old.write_text('{"text": "half a corpus"', encoding="utf-8")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    young = folder / (corpus._corpus_cache_file().stem + ".tmp99999")  # another process writing right now
    young.write_text("{}", encoding="utf-8")
    other = folder / "notes.tmp1"  # not a corpus temporary file
    other.write_text("x", encoding="utf-8")
    os.utime(other, (hour_ago, hour_ago))
    assert len(load_corpus("train")) == n  # read from the cache (no rebuild needed)
    assert not old.exists() and young.exists() and other.exists()
