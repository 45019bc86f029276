"""Fixes of the md16 metadata audit.

2. A dict (a dataset row) passed as guidance `metadata` was read as its keys: the model was conditioned on the
   literal column name (`"url"`); a set was accepted in arbitrary order.
3. An empty document with `add_eos=False` became a metadata prefix with no document (a padded batch of them gave the
   loss NaN; packing spent row space on an orphan context).
4. Blank metadata strings (`""`, `"   "`, `"\\n"`) were not missing: they trained as a shared non-empty context.
5. A list-of-str text was read by the tokenizer as one pre-split text, its items run together.
"""

import logging

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    MetadataCollator,
    build_guidance_inputs,
    generate_with_metadata_guidance,
    metadata_template,
)

from .conftest import tiny_llama

# ---------------------------------------------------------------------------------------------------------------------
# 2. guidance metadata


@pytest.mark.parametrize(
    "metadata, kind",
    [({"url": "https://en.wikipedia.org/wiki/Bern"}, "dict"), ({"a.org", "b.org"}, "set"), ((m for m in ["a"]), "gen")],
)
def test_guidance_metadata_must_be_an_ordered_list(ctx_tokenizer, metadata, kind):
    prompts = "The city of" if kind != "set" else ["a", "b"]
    with pytest.raises(TypeError) as err:
        build_guidance_inputs(ctx_tokenizer, prompts, metadata)
    message = str(err.value)
    assert message.startswith("metadata must be a str, None, or a list/tuple") and "metadata_template(...)(row)" in message


def test_generation_refuses_a_row_as_metadata_before_generating(ctx_tokenizer):
    model = tiny_llama(len(ctx_tokenizer)).eval()
    with pytest.raises(TypeError, match="got a dict \\(its keys would be read as the metadata\\)"):
        generate_with_metadata_guidance(
            model, ctx_tokenizer, "The city of", {"url": "a.org"}, guidance_scale=2.0, max_new_tokens=2
        )


def test_guidance_metadata_in_ordered_containers_is_accepted(ctx_tokenizer):
    expected = build_guidance_inputs(ctx_tokenizer, ["a", "b"], ["x.org", None])["input_ids"]
    column = Dataset.from_list([{"url": "x.org"}, {"url": None}])["url"]
    for metadata in (("x.org", None), column, np.array(["x.org", None], dtype=object)):
        assert torch.equal(build_guidance_inputs(ctx_tokenizer, ["a", "b"], metadata)["input_ids"], expected)
    with pytest.raises(TypeError, match="prompts must be a str or a list/tuple of str, got a dict"):
        build_guidance_inputs(ctx_tokenizer, {"text": "a"}, None)


# ---------------------------------------------------------------------------------------------------------------------
# 3. empty documents


def _decode_rows(tok, batch):
    return [tok.decode(row) for row in batch["input_ids"]]


def test_padded_batch_leaves_out_empty_documents(ctx_tokenizer, caplog):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0, add_eos=False)
    rows = [{"text": "", "url": "http://a.com/x"}, {"text": "hi there", "url": "http://b.com"},
            {"text": None, "url": "http://c.com"}]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hf_ext.metadata.collator"):
        batch = collator(rows)
        collator(rows)
    assert _decode_rows(ctx_tokenizer, batch) == [f"<|bos|>{CONTEXT_BEGIN}b.com{CONTEXT_END}hi there"]
    assert collator.empty_documents == 4
    assert len([r for r in caplog.records if "no tokens" in r.getMessage()]) == 1  # warned once
    model = tiny_llama(len(ctx_tokenizer)).float()
    assert torch.isfinite(model(**batch).loss)


def test_packed_rows_have_no_orphan_context(ctx_tokenizer):
    collator = MetadataCollator(
        ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0, add_eos=False, block_size=16
    )
    batch = collator([{"text": "", "url": "http://a.com/x"}, {"text": "hi there", "url": "http://b.com"}])
    tokens = ctx_tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens.count(CONTEXT_BEGIN) == 1 and "a" not in tokens[: tokens.index(CONTEXT_END)]
    assert collator.empty_documents == 1


@pytest.mark.parametrize("block_size", [None, 16])
def test_a_batch_of_empty_documents_is_refused_naming_text_column(ctx_tokenizer, block_size):
    collator = MetadataCollator(
        ctx_tokenizer, metadata_template("url_host"), text_column="body", metadata_dropout=0.0, add_eos=False,
        block_size=block_size,
    )  # fmt: skip
    with pytest.raises(ValueError, match="every document of this batch \\(2\\) is empty: text_column='body'"):
        collator([{"body": "", "url": "http://a.com/x"}, {"body": None, "url": "http://bb.org/y"}])


def test_with_eos_an_empty_document_is_its_eos(ctx_tokenizer):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0)
    batch = collator([{"text": "", "url": "http://a.com/x"}])
    assert _decode_rows(ctx_tokenizer, batch) == [f"<|bos|>{CONTEXT_BEGIN}a.com{CONTEXT_END}<|eos|>"]
    assert collator.empty_documents == 0


# ---------------------------------------------------------------------------------------------------------------------
# 4. blank metadata values


@pytest.mark.parametrize(
    "kind, row",
    [
        ("topic_format", {"topic": "", "format": "Tutorial"}),
        ("topic_format", {"topic": "Science", "format": "  "}),
        ("url", {"url": "   "}),
        ("url", {"url": "\n"}),
        ("url_host", {"url": " \t"}),
        ("column", {"src": "  "}),
    ],
)
def test_blank_metadata_is_missing(ctx_tokenizer, kind, row):
    template = metadata_template(kind, column="src" if kind == "column" else None)
    assert template(row) == ""
    collator = MetadataCollator(ctx_tokenizer, template, metadata_dropout=0.0)
    blank = collator([{"text": "doc", **row}])["input_ids"]
    missing = collator([{"text": "doc", **{k: None for k in row}}])["input_ids"]
    assert torch.equal(blank, missing) and collator.invalid_metadata == 0


def test_urls_are_stripped_and_a_format_of_blank_fields_is_empty():
    assert metadata_template("url")({"url": " https://a.org/x\n"}) == "https://a.org/x"
    assert metadata_template("url_host")({"url": "https://a.org/x "}) == "a.org"
    assert metadata_template("url_path")({"url": "https://a.org/x?q=1 \n"}) == "/x?q=1"
    fmt = metadata_template("format", fmt="{source} | {url}")
    assert fmt({"source": " ", "url": ""}) == ""
    assert fmt({"source": "wiki", "url": "  "}) == "wiki | "


# ---------------------------------------------------------------------------------------------------------------------
# 5. text type


@pytest.mark.parametrize("text", [["First paragraph.", "Second paragraph."], ("a", "b"), b"bytes", 3])
def test_text_that_is_not_a_str_is_refused_naming_text_column(ctx_tokenizer, text):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), text_column="body", metadata_dropout=0.0)
    with pytest.raises(TypeError, match="text_column='body' must hold a str \\(or None\\) per example, got a"):
        collator([{"body": text, "url": "http://a.com"}])
    with pytest.raises(TypeError, match="text_column='body'"):
        collator.metadata_for([{"body": text, "url": "http://a.com"}])
