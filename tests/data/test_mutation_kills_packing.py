"""Data layer behaviours pinned against brute-force references: packing of the whole token stream, offline
detection, where the validation split comes from, file extensions, the tokenizer cache's
`cache=False`, corrupt caches, and the embedded corpus' uniqueness, public-only documents and `split=None`."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from hf_ext.data import build_tokenizer, hub_offline, load_corpus, load_text_datasets, pack_dataset


def _stream(tokenizer, texts, add_eos=True):
    out = []
    for text in texts:
        out += tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if add_eos:
            out.append(tokenizer.eos_token_id)
    return out


def _blocks(stream, block, drop_remainder=True):
    stop = len(stream) - (len(stream) % block if drop_remainder else 0)
    return [stream[i : i + block] for i in range(0, stop, block)]


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_blocks_are_cut_from_the_whole_token_stream(tokenizer, drop_remainder):
    """Block k is tokens [k * block, (k + 1) * block) of all documents joined with EOS: nothing is dropped at the
    map's batch boundaries (it dropped each 256-document batch's remainder), whatever num_proc, and a stream of the
    same documents (in several shards) gives the same blocks."""
    texts = [f"document {i} " + "word " * (i % 7) for i in range(600)]
    block = 5
    expected = _blocks(_stream(tokenizer, texts), block, drop_remainder)
    per_batch = [b for start in (0, 256, 512) for b in _blocks(_stream(tokenizer, texts[start : start + 256]), block)]
    assert len(per_batch) < len(expected)  # the old per-batch grouping loses tokens here
    data = Dataset.from_dict({"text": texts})
    for num_proc in (None, 2):
        packed = pack_dataset(data, tokenizer, block_size=block, drop_remainder=drop_remainder, num_proc=num_proc)
        assert packed["input_ids"] == expected
        assert packed["labels"] == expected and packed["attention_mask"] == [[1] * len(b) for b in expected]
    stream = pack_dataset(data.to_iterable_dataset(num_shards=3), tokenizer, block, drop_remainder=drop_remainder)
    assert [row["input_ids"] for row in stream] == expected


def test_short_documents_fill_long_blocks(tokenizer):
    """Many short documents and a block longer than 256 of them: every whole block of the stream is formed (the
    per-batch grouping formed none and the recipes refused the data, advising a smaller --block_size)."""
    texts = [f"tweet {i} short text" for i in range(1000)]
    stream = _stream(tokenizer, texts)
    block = len(_stream(tokenizer, texts[:256])) + 7  # longer than any 256-document batch
    packed = pack_dataset(Dataset.from_dict({"text": texts}), tokenizer, block_size=block)
    assert packed.num_rows == len(stream) // block >= 3
    assert packed["input_ids"] == _blocks(stream, block)


@pytest.mark.parametrize("value", ["1", "true", "True", " yes ", "on", "ON"])
def test_offline_flags_are_read_case_insensitively(monkeypatch, value):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert hub_offline() is False
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, value)
        assert hub_offline() is True, var
        monkeypatch.setenv(var, "0")
        assert hub_offline() is False, var


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def test_a_local_dataset_without_validation_uses_its_test_split(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [f"train doc {i}" for i in range(6)])
    _jsonl(folder / "test.jsonl", [f"test doc {i}" for i in range(3)])
    train, valid = load_text_datasets(dataset_name=str(folder))
    assert train["text"] == [f"train doc {i}" for i in range(6)]
    assert valid["text"] == [f"test doc {i}" for i in range(3)]


def test_file_extensions_are_case_insensitive(tmp_path):
    upper = _jsonl(tmp_path / "TRAIN.JSONL", [f"doc {i}" for i in range(4)])
    valid = tmp_path / "VALID.TXT"
    valid.write_text("line one\nline two\n")
    train, val = load_text_datasets(train_file=upper, validation_file=str(valid))
    assert train["text"] == [f"doc {i}" for i in range(4)] and val["text"] == ["line one\nline two"]  # a paragraph


def test_cache_false_neither_reads_nor_trusts_the_cache(tmp_path, monkeypatch):
    """build_tokenizer(cache=False) trains afresh even when a (different) tokenizer sits in the cache folder."""
    from hf_ext.data import corpus

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    texts = ["alpha beta gamma delta epsilon zeta"] * 30
    monkeypatch.setattr(corpus, "load_corpus", lambda split: {"text": texts})
    cached = build_tokenizer(300)
    (folder,) = (tmp_path / "tokenizers").iterdir()
    planted = build_tokenizer(300, texts=["completely other words here 0123456789"] * 30)
    assert planted.get_vocab() != cached.get_vocab()
    planted.save_pretrained(str(folder))  # someone else's tokenizer in the cache
    assert build_tokenizer(300).get_vocab() == planted.get_vocab()  # cache=True reads it
    assert build_tokenizer(300, cache=False).get_vocab() == cached.get_vocab()  # cache=False trains on the corpus


def test_a_corrupt_cached_tokenizer_is_rebuilt(tmp_path, monkeypatch, caplog):
    from hf_ext.data import corpus

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    texts = ["alpha beta gamma delta epsilon zeta"] * 30
    monkeypatch.setattr(corpus, "load_corpus", lambda split: {"text": texts})
    fresh = build_tokenizer(300)
    (folder,) = (tmp_path / "tokenizers").iterdir()
    (folder / "tokenizer.json").write_text('{"truncated": ')
    with caplog.at_level("WARNING"):
        rebuilt = build_tokenizer(300)
    assert "unusable" in caplog.text
    assert rebuilt.get_vocab() == fresh.get_vocab()
    assert build_tokenizer(300).get_vocab() == fresh.get_vocab()  # the cache was repaired


def test_corpus_documents_are_unique_and_public(corpus, corpus_test):
    texts = list(corpus["text"]) + list(corpus_test["text"])
    assert len(set(texts)) == len(texts)
    for source in list(corpus["source"]) + list(corpus_test["source"]):
        if source.startswith(("module:", "topic:")):
            continue
        assert not source.rsplit(".", 1)[1].startswith("_"), source


def test_split_none_gives_both_splits(corpus, corpus_test):
    both = load_corpus(None)
    assert set(both) == {"train", "test"}
    assert both["train"]["url"] == corpus["url"] and both["test"]["url"] == corpus_test["url"]
    assert both["test"].column_names == ["text", "url", "domain", "source"]
