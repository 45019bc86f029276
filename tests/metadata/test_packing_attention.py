"""Packing keeps documents apart: a packed document's logits equal the same tokens run alone (eager and SDPA)."""

import pytest
import torch

from hf_ext.metadata import MetadataCollator, metadata_template

from .conftest import tiny_llama

ROWS = [
    {"text": "short doc one here", "url": "https://a.org/x"},
    {"text": "another short doc", "url": "https://b.org/y"},
    {"text": "a third document that is long enough to run over the end of the first row", "url": "https://c.org/z"},
]


def segments(batch, pad_id):
    """(row, start, end) of every document segment: positions restart at 0 on each one; trailing padding excluded."""
    out = []
    for r, pos in enumerate(batch["position_ids"].tolist()):
        ids, labels = batch["input_ids"][r].tolist(), batch["labels"][r].tolist()
        real = len(pos)
        while real > 0 and labels[real - 1] == -100 and ids[real - 1] == pad_id:
            real -= 1
        starts = [j for j in range(real) if pos[j] == 0] + [real]
        out += [(r, a, b) for a, b in zip(starts, starts[1:])]
    return out


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_documents_match_running_alone_by_default(ctx_tokenizer, attn):
    tok = ctx_tokenizer
    collator = MetadataCollator(tok, metadata_template("url_host"), metadata_dropout=0.0, block_size=40)
    batch = collator(ROWS)
    assert batch["input_ids"].shape[0] >= 2  # the third document continues into a second row
    segs = segments(batch, tok.pad_token_id)
    assert len(segs) >= 4 and any(r == 0 and a > 0 for r, a, _ in segs)  # several documents share row 0
    model = tiny_llama(len(tok))
    model.set_attn_implementation(attn)
    model.eval()
    with torch.no_grad():
        packed = model(**batch).logits
        for r, a, b in segs:
            alone = model(input_ids=batch["input_ids"][r : r + 1, a:b]).logits[0]
            torch.testing.assert_close(packed[r, a:b], alone, rtol=1e-4, atol=1e-5, msg=f"row {r} [{a}:{b}] {attn}")
    # The batch also trains: the loss is finite and every document token is a label.
    loss = model(**batch).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_cross_document_packing_uses_row_positions(ctx_tokenizer, attn):
    """document_attention=False (plain packing): positions run through the row, matching the all-row causal mask."""
    tok = ctx_tokenizer
    collator = MetadataCollator(
        tok, metadata_template("url_host"), metadata_dropout=0.0, block_size=40, document_attention=False
    )
    batch = collator(ROWS)
    mask = batch["attention_mask"]
    for r in range(mask.shape[0]):
        n = int(mask[r].sum())
        assert batch["position_ids"][r, :n].tolist() == list(range(n))
    model = tiny_llama(len(tok))
    model.set_attn_implementation(attn)
    model.eval()
    with torch.no_grad():
        with_pos = model(**batch).logits
        plain = model(input_ids=batch["input_ids"], attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(with_pos[real], plain[real], rtol=1e-4, atol=1e-5)


def test_document_attention_arguments(ctx_tokenizer):
    tok = ctx_tokenizer
    template = metadata_template("url_host")
    assert MetadataCollator(tok, template, block_size=32).document_attention is True
    assert MetadataCollator(tok, template, max_length=32).document_attention is False
    with pytest.raises(ValueError, match="document_attention"):
        MetadataCollator(tok, template, document_attention=True)
    with pytest.raises(ValueError, match="return_position_ids"):
        MetadataCollator(tok, template, block_size=32, return_position_ids=False)
