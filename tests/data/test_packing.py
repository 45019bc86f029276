import pytest
from datasets import Dataset

from hf_ext.data import pack_dataset


def test_packing_blocks_and_separators(tokenizer):
    docs = Dataset.from_dict({"text": ["alpha beta gamma " * 20, "delta epsilon " * 30, "zeta"]})
    packed = pack_dataset(docs, tokenizer, block_size=16)
    assert set(packed.column_names) == {"input_ids", "attention_mask", "labels"}
    assert all(len(b) == 16 for b in packed["input_ids"])
    assert packed["labels"] == packed["input_ids"]
    stream = [t for b in packed["input_ids"] for t in b]
    expected = []
    for t in docs["text"]:
        expected += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert stream == expected[: len(stream)]
    assert len(expected) - len(stream) < 16
    assert stream.count(tokenizer.eos_token_id) >= 1


def test_packing_errors(tokenizer):
    docs = Dataset.from_dict({"content": ["hello"]})
    with pytest.raises(ValueError, match="block_size"):
        pack_dataset(docs, tokenizer, block_size=0, text_column="content")
    with pytest.raises(ValueError, match="text_column"):
        pack_dataset(docs, tokenizer, block_size=8)


def test_non_text_values_are_named(tokenizer):
    """A JSON null / empty CSV cell in the text column gives a ValueError naming the column, not a tokenizer error."""
    docs = Dataset.from_dict({"body": ["hello world", None]})
    with pytest.raises(ValueError, match="text_column='body'"):
        pack_dataset(docs, tokenizer, block_size=4, text_column="body")


def test_no_block_formed_gives_the_block_columns_empty(tokenizer):
    """Documents shorter than one block (or no documents): an empty dataset with the blocks' columns and types, as
    the docstring says (was: the input's columns, `text` and `url`, so `packed["input_ids"]` was a KeyError)."""
    formed = pack_dataset(Dataset.from_dict({"text": ["word " * 100], "url": ["u"]}), tokenizer, block_size=16)
    assert len(formed) > 0
    for docs in (Dataset.from_dict({"text": ["a short doc"] * 3, "url": ["u"] * 3}), Dataset.from_dict({"text": []})):
        packed = pack_dataset(docs, tokenizer, block_size=64)
        assert len(packed) == 0 and packed["input_ids"] == [] and packed["labels"] == []
        assert packed.features == formed.features  # input_ids int32, attention_mask int8, labels int64
