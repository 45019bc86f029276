"""uj18 F3: `pack_dataset` on a streaming `IterableDataset` crashed inside `datasets` (`map()` got `num_proc`; a
generator stream without features: "argument of type 'NoneType' is not iterable"), and on a `DatasetDict` it told
the user to rename a text column that every split has. A stream is now packed lazily into the same blocks as the
`Dataset` it streams, each split of a `DatasetDict` / `IterableDatasetDict` is packed alone, and what cannot work
(`num_proc` on a stream, a split without the text column, another type) is refused naming it."""

import datasets
import pytest
from datasets import Dataset

from hf_ext.data import pack_dataset

TEXTS = [f"document {i} " + "alpha beta gamma delta " * (i % 7 + 1) for i in range(300)]


@pytest.fixture
def docs():
    return Dataset.from_dict({"text": TEXTS, "url": [f"u{i}" for i in range(300)]})


def _rows(stream):
    return {name: [row[name] for row in stream] for name in ("input_ids", "attention_mask", "labels")}


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_iterable_dataset_is_packed_lazily_like_the_dataset(docs, tokenizer, drop_remainder):
    ref = pack_dataset(docs, tokenizer, block_size=16, drop_remainder=drop_remainder)
    packed = pack_dataset(docs.to_iterable_dataset(), tokenizer, block_size=16, drop_remainder=drop_remainder)
    assert isinstance(packed, datasets.IterableDataset)
    assert packed.column_names == ["input_ids", "attention_mask", "labels"]
    rows = _rows(packed)
    assert len(rows["input_ids"]) == ref.num_rows > 10
    for name in rows:
        assert rows[name] == ref[name]


def test_generator_stream_without_features(docs, tokenizer):
    ref = pack_dataset(docs, tokenizer, block_size=16)
    gen = datasets.IterableDataset.from_generator(lambda: ({"text": t, "n": 1} for t in TEXTS))
    assert gen.column_names is None
    assert _rows(pack_dataset(gen, tokenizer, block_size=16))["input_ids"] == ref["input_ids"]
    empty = datasets.IterableDataset.from_generator(lambda: iter([]))
    assert list(pack_dataset(empty, tokenizer, block_size=16)) == []


def test_stream_refusals(docs, tokenizer):
    with pytest.raises(ValueError, match=r"num_proc=2 .*IterableDataset.*leave num_proc None"):
        pack_dataset(docs.to_iterable_dataset(), tokenizer, block_size=16, num_proc=2)
    no_text = datasets.IterableDataset.from_generator(lambda: iter([{"body": "a b"}]))
    with pytest.raises(ValueError, match=r"text_column='text' is not a column .*\['body'\]"):
        pack_dataset(no_text, tokenizer, block_size=16)
    with pytest.raises(TypeError, match=r"DatasetDict or IterableDatasetDict, got a list"):
        pack_dataset(TEXTS, tokenizer, block_size=16)


def test_dataset_dict_packs_each_split(docs, tokenizer):
    val = docs.select(range(10))
    out = pack_dataset(datasets.DatasetDict(train=docs, validation=val), tokenizer, block_size=16)
    assert isinstance(out, datasets.DatasetDict) and list(out) == ["train", "validation"]
    assert out["train"]["input_ids"] == pack_dataset(docs, tokenizer, block_size=16)["input_ids"]
    assert out["validation"]["input_ids"] == pack_dataset(val, tokenizer, block_size=16)["input_ids"]
    streams = datasets.IterableDatasetDict(train=docs.to_iterable_dataset(), validation=val.to_iterable_dataset())
    out = pack_dataset(streams, tokenizer, block_size=16)
    assert isinstance(out, datasets.IterableDatasetDict)
    assert _rows(out["validation"])["labels"] == pack_dataset(val, tokenizer, block_size=16)["labels"]


def test_dataset_dict_refusals_name_the_split(docs, tokenizer):
    mixed = datasets.DatasetDict(train=docs, test=docs.rename_column("text", "content"))
    with pytest.raises(ValueError, match=r"text_column='text' is not a column of split 'test' .*'content'"):
        pack_dataset(mixed, tokenizer, block_size=16)
    streams = datasets.IterableDatasetDict(train=docs.to_iterable_dataset())
    with pytest.raises(ValueError, match=r"num_proc=2 .*IterableDataset"):
        pack_dataset(streams, tokenizer, block_size=16, num_proc=2)
