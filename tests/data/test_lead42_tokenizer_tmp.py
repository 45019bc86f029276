"""Tokenizer cache: a build killed while saving leaves a `.tmp-*` folder in `<HF_EXT_CACHE>/tokenizers/` (never
read; an exception removes its own in `build_tokenizer`'s `finally`, a SIGKILL cannot). The next build that trains a
tokenizer removes such leftovers older than `_STALE_TMP_SECONDS` (a younger one may be another process's save in
progress), as the corpus cache does for its temporary files."""

from __future__ import annotations

import os
import time


def test_a_killed_saves_leftover_folder_is_removed_by_a_later_build(tmp_path, monkeypatch):
    from hf_ext.data import tokenizer as tokenizer_module

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    folder = tmp_path / "tokenizers"
    folder.mkdir()
    hour_ago = time.time() - 3600
    old = folder / ".tmp-killed1"  # a save killed an hour ago, half a tokenizer folder
    old.mkdir()
    (old / "tokenizer_config.json").write_text("{", encoding="utf-8")
    os.utime(old, (hour_ago, hour_ago))
    young = folder / ".tmp-inprogress"  # another process saving right now
    young.mkdir()
    other = folder / "notes"  # not a temporary folder of a build
    other.mkdir()
    os.utime(other, (hour_ago, hour_ago))
    tok = tokenizer_module.build_tokenizer(vocab_size=300)
    assert len(tok) > 0
    names = sorted(p.name for p in folder.iterdir())
    assert ".tmp-killed1" not in names  # before: kept for good
    assert ".tmp-inprogress" in names and "notes" in names
    assert any(n.startswith("bpe-300-") for n in names)
