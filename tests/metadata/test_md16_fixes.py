"""Fixes of the md16 metadata audit.

4. Blank metadata strings (`""`, `"   "`, `"\\n"`) were not missing: they trained as a shared non-empty context.
"""


import pytest
import torch

from hf_ext.metadata import (
    MetadataCollator,
    metadata_template,
)

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


