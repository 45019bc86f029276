"""Packaging audit pass 19 (pk19) fixes in the data package.

F5: an unwritable cache folder (a read-only home, or a container user whose HOME is ``/``, with HF_EXT_CACHE unset)
made every recipe fail with a bare FileNotFoundError / PermissionError from the corpus cache write, after the corpus
was built, with no word of HF_EXT_CACHE. Now it is a PermissionError naming HF_EXT_CACHE and the folder it tried,
raised before the corpus / tokenizer is built.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def _unwritable_below(monkeypatch, root: Path):
    """Make every mkdir at or below ``root`` fail as on a read-only filesystem (portable, also as root)."""
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == root or root in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def _no_build(monkeypatch):
    from hf_ext.data import corpus

    def build():
        raise AssertionError("the corpus was built before the unwritable cache was noticed")

    monkeypatch.setattr(corpus, "build_corpus_records", build)


def test_an_unwritable_default_cache_names_hf_ext_cache(tmp_path, monkeypatch):
    from hf_ext.data import load_corpus

    home = tmp_path / "home"
    monkeypatch.delenv("HF_EXT_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(home))
    _unwritable_below(monkeypatch, home)
    _no_build(monkeypatch)
    with pytest.raises(PermissionError) as info:
        load_corpus("train")
    msg = str(info.value)
    assert "HF_EXT_CACHE" in msg and "HF_EXT_CACHE is unset" in msg, msg
    assert str(home / ".cache" / "hf_ext" / "corpus") in msg and "Permission denied" in msg, msg
    assert not home.exists()


def test_an_unwritable_hf_ext_cache_is_named(tmp_path, monkeypatch):
    from hf_ext.data import load_corpus

    cache = tmp_path / "ro_cache"
    monkeypatch.setenv("HF_EXT_CACHE", str(cache))
    _unwritable_below(monkeypatch, cache)
    _no_build(monkeypatch)
    with pytest.raises(PermissionError, match=r"Cannot write the hf_ext cache folder .*ro_cache.corpus .*\$HF_EXT_CACHE"):
        load_corpus("train")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, where nothing can be created")
def test_a_home_under_proc_is_named(monkeypatch):
    """The audit's repro: HOME=/proc/nohome (unwritable even for root)."""
    from hf_ext.data import load_corpus

    monkeypatch.delenv("HF_EXT_CACHE", raising=False)
    monkeypatch.setenv("HOME", "/proc/hf_ext_nohome")
    _no_build(monkeypatch)
    with pytest.raises(PermissionError, match=r"/proc/hf_ext_nohome/\.cache/hf_ext/corpus .*Set HF_EXT_CACHE"):
        load_corpus("train")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_existing_cache_folder_is_named(tmp_path, monkeypatch):
    from hf_ext.data import load_corpus

    cache = tmp_path / "cache"
    (cache / "corpus").mkdir(parents=True)
    (cache / "corpus").chmod(0o555)
    monkeypatch.setenv("HF_EXT_CACHE", str(cache))
    _no_build(monkeypatch)
    try:
        with pytest.raises(PermissionError, match=r"cache.corpus \(Permission denied\).*HF_EXT_CACHE"):
            load_corpus("train")
    finally:
        (cache / "corpus").chmod(0o755)


def test_a_complete_read_only_cache_is_still_read(tmp_path, monkeypatch):
    """A prepared cache that cannot be written to (a shared, read-only one) is read, not refused."""
    from hf_ext.data import corpus, load_corpus

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    n = len(load_corpus("train"))  # writes the cache
    _unwritable_below(monkeypatch, tmp_path)
    _no_build(monkeypatch)
    assert corpus._corpus_cache_file().is_file() and len(load_corpus("train")) == n


def test_an_unwritable_tokenizer_cache_is_named_before_training(tmp_path, monkeypatch):
    from hf_ext.data import corpus
    from hf_ext.data import tokenizer as T

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus, "load_corpus", lambda split: {"text": ["alpha beta gamma delta"] * 30})
    trained = []
    real_train = T._train_tokenizer
    monkeypatch.setattr(T, "_train_tokenizer", lambda *a: trained.append(1) or real_train(*a))
    _unwritable_below(monkeypatch, tmp_path / "cache" / "tokenizers")
    with pytest.raises(PermissionError, match=r"cache.tokenizers .*\$HF_EXT_CACHE .*Set HF_EXT_CACHE"):
        T.build_tokenizer(300)
    assert not trained
    assert T.build_tokenizer(300, cache=False).vocab_size > 0  # no cache asked for: no cache needed


def test_cache_root_expands_user_and_variables(tmp_path, monkeypatch):
    """da35 F3: HF_EXT_CACHE="~/hfx" (set where no shell expands it) was used literally, a folder named `~` in the
    working directory; the Hub expands `~` and `$VAR` in HF_HOME."""
    from hf_ext.data.utils import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DA35_SUB", "sub")
    monkeypatch.setenv("HF_EXT_CACHE", "~/hfx/$DA35_SUB")
    assert cache_dir() == tmp_path / "hfx" / "sub"
