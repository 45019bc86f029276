"""rv31 F2: `pack_dataset` on a `Dataset` with a `with_transform` / `set_transform` transform (format type "custom").

Since the pass-30 format change the text was read as stored (the transform skipped) and the transform was set again
on the packed blocks, where it fails at their first access (`KeyError: 'text'`): `pack_dataset` returned without an
error a dataset that could not be read, its blocks tokenized from text the user's view of the data never showed.
It is now refused by name, with the fix."""

import pytest
from datasets import Dataset, DatasetDict

from hf_ext.data import pack_dataset


def _lowercased():
    documents = Dataset.from_dict({"text": ["Hello World " * 20, "Foo Bar " * 30]})
    return documents.with_transform(lambda batch: {"text": [t.lower() for t in batch["text"]]})


def test_a_transformed_dataset_is_refused_with_the_fix(small_tokenizer):
    with pytest.raises(ValueError, match=r"with_transform / set_transform transform.*dataset\.map\(transform"):
        pack_dataset(_lowercased(), small_tokenizer, block_size=16)


def test_a_transformed_split_is_refused_by_name(small_tokenizer):
    with pytest.raises(ValueError, match=r"split 'train' with a with_transform"):
        pack_dataset(DatasetDict({"train": _lowercased()}), small_tokenizer, block_size=16)


def test_the_transform_applied_first_packs_its_text(small_tokenizer):
    applied = (
        _lowercased().with_format(None).map(lambda batch: {"text": [t.lower() for t in batch["text"]]}, batched=True)
    )
    packed = pack_dataset(applied, small_tokenizer, block_size=16)
    assert small_tokenizer.decode(packed[0]["input_ids"]).startswith("hello world")
