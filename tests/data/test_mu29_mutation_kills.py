"""Packing pinned against the documented document boundary (mu29 mutation pass; each test fails on its mutant)."""

from __future__ import annotations

import pytest
from datasets import Dataset

from hf_ext.data import pack_dataset


@pytest.mark.parametrize("streaming", [False, True])
def test_a_document_that_spells_the_eos_token_gets_no_boundary_inside_it(tokenizer, streaming):
    """Only the EOS that `add_eos` appends separates documents: a document whose text spells "<|eos|>" (or the other
    special tokens) keeps that spelling as ordinary text, so the packed stream holds exactly one EOS id per document,
    each at its document's end. Read from the tokens alone: the positions of the EOS ids are the cumulative document
    lengths."""
    eos = tokenizer.eos_token_id
    specials = [t for t in tokenizer.all_special_tokens if t]
    assert tokenizer.eos_token in specials
    texts = [f"alpha {tokenizer.eos_token} beta", "plain words here", " ".join(specials) + " gamma", "delta"]
    data = Dataset.from_dict({"text": texts})
    if streaming:
        data = data.to_iterable_dataset()
    packed = pack_dataset(data, tokenizer, block_size=4, drop_remainder=False)
    stream = [t for row in packed for t in row["input_ids"]]
    ends = [i for i, t in enumerate(stream) if t == eos]
    assert len(ends) == len(texts) and ends[-1] == len(stream) - 1
    control = {i for i in tokenizer.all_special_ids if i is not None}
    # between two boundaries lies one document's text: no control token of any kind
    assert not control & (set(stream) - {eos})
    # and the text between boundaries decodes back to each document
    starts = [0] + [e + 1 for e in ends[:-1]]
    assert [tokenizer.decode(stream[s:e]) for s, e in zip(starts, ends)] == texts
