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
