"""Fixes of the md17 metadata audit.

1. A bytes URL value (an Arrow/parquet `binary` column) was trained as its repr: every `url_host` became `b'https:`;
   other non-str URL values (`True`, numbers) were str()-ed silently.
"""

import pytest
import torch

from hf_ext.metadata import CONTEXT_BEGIN, CONTEXT_END, InvalidMetadataError, MetadataCollator, metadata_template

# ---------------------------------------------------------------------------------------------------------------------
# 1. bytes and other non-str values


@pytest.mark.parametrize(
    "kind, expected",
    [("url", "https://en.wikipedia.org/wiki/Bern"), ("url_host", "en.wikipedia.org"), ("url_path", "/wiki/Bern")],
)
@pytest.mark.parametrize("wrap", [bytes, bytearray])
def test_bytes_url_is_decoded(kind, expected, wrap):
    template = metadata_template(kind)
    assert template({"url": wrap(b" https://en.wikipedia.org/wiki/Bern\n")}) == expected
    assert template({"url": wrap(b"  ")}) == ""  # blank bytes are missing, as a blank str


def test_bytes_are_decoded_in_every_kind():
    assert metadata_template("column", column="src")({"src": "Zürich".encode()}) == "Zürich"
    assert metadata_template("topic_format")({"topic": b"Science", "format": b"Tutorial"}) == "Science, Tutorial"
    assert metadata_template("format", fmt="{src} | {url}")({"src": b"wiki", "url": b"a.org"}) == "wiki | a.org"


@pytest.mark.parametrize("value", [b"https://a.org/\xff\xfe", True, 3, 2.5, ["a.com"]])
@pytest.mark.parametrize("kind", ["url", "url_host", "url_path"])
def test_non_utf8_bytes_and_non_str_urls_are_invalid(kind, value):
    with pytest.raises(InvalidMetadataError, match="column 'url'"):
        metadata_template(kind)({"url": value})


def test_collator_trains_bytes_urls_with_their_host_and_counts_bad_ones(ctx_tokenizer):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0)
    rows = [{"text": "First doc.", "url": b"https://en.wikipedia.org/wiki/Bern"},
            {"text": "Second doc.", "url": b"https://www.bbc.co.uk/\xff"},
            {"text": "Third doc.", "url": True}]  # fmt: skip
    batch = collator(rows)
    decoded = [ctx_tokenizer.decode(r, skip_special_tokens=False) for r in batch["input_ids"]]
    assert decoded[0].startswith(f"<|bos|>{CONTEXT_BEGIN}en.wikipedia.org{CONTEXT_END}First doc.")
    missing = collator([rows[0], {"text": "Second doc.", "url": None}, {"text": "Third doc.", "url": None}])
    assert torch.equal(batch["input_ids"], missing["input_ids"])  # the bad ones trained without metadata
    assert collator.invalid_metadata == 2
