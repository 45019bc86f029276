"""Pass-30 fix: `pack_dataset` on a `Dataset` formatted as numpy, arrow or pandas (`ds.with_format("numpy")`) failed:
the text column came as an array / Arrow scalars / a Series the tokenizer refuses (or the text check misread as a
null cell). The documents are now read as Python strings whatever the format, and the blocks come back in the input's
format, the same blocks as from the unformatted dataset."""

import pytest
from datasets import Dataset

from hf_ext.data import pack_dataset


@pytest.fixture(scope="module")
def documents():
    return Dataset.from_dict({"text": ["hello world " * 20, "foo bar baz " * 30, "x"]})


@pytest.mark.parametrize("fmt", ["numpy", "arrow", "pandas", "torch"])
def test_formatted_dataset_packs_into_the_same_blocks_in_its_format(documents, small_tokenizer, fmt):
    reference = pack_dataset(documents, small_tokenizer, block_size=16)
    packed = pack_dataset(documents.with_format(fmt), small_tokenizer, block_size=16)
    assert packed.format["type"] == fmt
    assert packed.with_format(None)[:] == reference[:]


@pytest.mark.parametrize("fmt", ["numpy", "arrow"])
def test_formatted_streaming_dataset_packs_into_the_same_blocks(documents, small_tokenizer, fmt):
    reference = pack_dataset(documents, small_tokenizer, block_size=16)
    packed = pack_dataset(documents.to_iterable_dataset().with_format(fmt), small_tokenizer, block_size=16)
    assert [row["input_ids"] for row in packed] == reference["input_ids"]
