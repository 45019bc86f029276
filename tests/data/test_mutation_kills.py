"""Checks of the shared data layer against independent references (brute-force packing, set algebra on splits).

Written from a mutation-testing pass: each test fails for a plausible bug that the other data tests let through
(e.g. blocks built with the wrong stride, EOS lost at a block boundary, a validation split that overlaps training).
"""

from __future__ import annotations

import hashlib
import json

import pytest
from datasets import Dataset

from hf_ext.data import build_tokenizer, load_corpus, load_text_datasets, pack_dataset
from hf_ext.data.corpus import HOLDOUT_FRACTION

DOCS = [
    "alpha beta gamma " * 3,
    "x",
    "delta epsilon zeta eta theta",
    "iota",
    "kappa lambda mu " * 2,
    "nu xi",
    "omicron",
]


def _reference_blocks(tokenizer, texts, block_size, add_eos=True, drop_remainder=True):
    """Concatenate-and-chunk, written out plainly: every document, then EOS; cut into consecutive blocks."""
    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        if add_eos:
            stream.append(tokenizer.eos_token_id)
    blocks = []
    start = 0
    while start < len(stream):
        block = stream[start : start + block_size]
        if len(block) == block_size or not drop_remainder:
            blocks.append(block)
        start += block_size
    return blocks, stream


@pytest.mark.parametrize("block_size", [1, 3, 4, 5, 7, 16])
def test_packing_matches_brute_force_concatenate_and_chunk(tokenizer, block_size):
    """Exact blocks, an EOS after every document (also where a document ends on a block boundary), full masks and
    unshifted labels (the model shifts them), remainder dropped."""
    packed = pack_dataset(Dataset.from_dict({"text": DOCS}), tokenizer, block_size=block_size)
    expected, stream = _reference_blocks(tokenizer, DOCS, block_size)
    assert packed["input_ids"] == expected
    assert packed["labels"] == expected
    assert packed["attention_mask"] == [[1] * block_size for _ in expected]
    assert len(stream) - sum(map(len, expected)) < block_size
    assert stream.count(tokenizer.eos_token_id) == len(DOCS)


def test_keep_remainder_and_no_eos(tokenizer):
    block_size = 5
    docs = Dataset.from_dict({"text": DOCS})
    kept = pack_dataset(docs, tokenizer, block_size=block_size, drop_remainder=False)
    expected, stream = _reference_blocks(tokenizer, DOCS, block_size, drop_remainder=False)
    assert len(stream) % block_size  # the case needs a partial last block
    assert kept["input_ids"] == expected and [t for b in kept["input_ids"] for t in b] == stream
    assert kept["attention_mask"] == [[1] * len(b) for b in expected] and kept["labels"] == expected
    no_eos = pack_dataset(docs, tokenizer, block_size=block_size, add_eos=False)
    assert no_eos["input_ids"] == _reference_blocks(tokenizer, DOCS, block_size, add_eos=False)[0]
    assert not any(tokenizer.eos_token_id in b for b in no_eos["input_ids"])


def test_fresh_tokenizer_special_tokens_vocab_and_round_trip():
    """A tokenizer trained now (not read from the cache): the three special tokens are distinct single ids inside the
    vocabulary, the size is the requested one, and text never seen in training round-trips (byte alphabet)."""
    vocab = 300
    tok = build_tokenizer(
        vocab, texts=[f"abc word{i} value{i * i} abd" for i in range(300)]
    )  # enough merges to fill it
    assert len(tok) == vocab
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    ids = [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]
    assert len(set(ids)) == 3 and all(0 <= i < vocab for i in ids)
    for special, idx in zip(("<|bos|>", "<|eos|>", "<|pad|>"), ids):
        assert tok.convert_tokens_to_ids(special) == idx
        # a prompt that spells it is that token (transformers' default); documents are packed with
        # split_special_tokens=True, where the spelling stays text (collators and packing insert the id)
        assert tok(special, add_special_tokens=False)["input_ids"] == [idx]
        assert idx not in tok(special, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    for text in ("abc", "Zürich — 東京 ✓\n\tq{}", " leading space"):
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok("abc")["input_ids"] == tok("abc", add_special_tokens=False)["input_ids"]  # no BOS/EOS added on its own


def test_vocab_size_must_leave_room_for_the_special_tokens():
    for too_small in (256, 258):
        with pytest.raises(ValueError, match="vocab_size"):
            build_tokenizer(too_small, texts=["abc"])
    assert len(build_tokenizer(259, texts=["abc"])) == 259


def test_embedded_corpus_validation_is_the_held_out_split():
    train, valid = load_text_datasets()
    held_out = load_corpus("test")
    assert valid["url"] == held_out["url"] and len(valid) > 0
    assert not set(train["url"]) & set(valid["url"])
    assert not set(train["text"]) & set(valid["text"])
    # the split rule itself (hash of the URL below HOLDOUT_FRACTION), recomputed here
    for url in list(valid["url"])[:50] + list(train["url"])[:200]:
        digest = int(hashlib.sha256(url.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        assert (digest < HOLDOUT_FRACTION) == (url in set(held_out["url"]))


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def test_validation_fraction_split_sizes_disjointness_and_seed(tmp_path):
    docs = [f"document number {i}" for i in range(40)]
    train_file = _jsonl(tmp_path / "train.jsonl", docs)
    train, valid = load_text_datasets(train_file=train_file, validation_fraction=0.25, seed=0)
    assert (len(train), len(valid)) == (30, 10)
    assert not set(train["text"]) & set(valid["text"])
    assert sorted(list(train["text"]) + list(valid["text"])) == sorted(docs)
    again_train, again_valid = load_text_datasets(train_file=train_file, validation_fraction=0.25, seed=0)
    assert list(again_valid["text"]) == list(valid["text"]) and list(again_train["text"]) == list(
        train["text"]
    )  # a resumed run sees the same
    other = [load_text_datasets(train_file=train_file, validation_fraction=0.25, seed=s)[1]["text"] for s in (1, 2)]
    assert any(set(o) != set(valid["text"]) for o in other)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="validation_fraction"):
            load_text_datasets(train_file=train_file, validation_fraction=bad)


def test_local_dataset_prefers_its_validation_split_and_the_validation_file_wins(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        _jsonl(folder / f"{split}.jsonl", [f"{split} doc {i}" for i in range(4)])
    train, valid = load_text_datasets(dataset_name=str(folder))
    assert train["text"] == [f"train doc {i}" for i in range(4)]
    assert valid["text"] == [f"validation doc {i}" for i in range(4)]
    mine = tmp_path / "mine.txt"
    mine.write_text("my line\n")
    assert load_text_datasets(dataset_name=str(folder), validation_file=str(mine))[1]["text"] == ["my line"]
