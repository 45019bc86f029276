"""The recipe's held-out comparison scores the same document tokens in every condition.

Its evaluation collators cut prefix and document together to `--block_size`, so a long document kept up to ~30 fewer
(late, lower-loss) tokens after a long URL prefix than after the empty context (3 tokens) or the baseline's BOS: on the
default run the baseline was better on the same tokens (5.553) yet reported worse (5.586 vs the URL model's 5.560).
Now every evaluation cuts the document to `block_size` less the longest prefix (`max_document_tokens`)."""

import pytest
import torch

from hf_ext.data import build_tokenizer
from hf_ext.metadata import MetadataCollator, add_context_tokens, metadata_template

LONG = " ".join(f"word{i}" for i in range(120))  # far longer than the row
DOCS = [
    {"text": LONG, "url": "https://www.long-hostname.example.org/deep/path"},
    {"text": "short document.", "url": "https://a.org/x"},
    {"text": LONG[::-1], "url": "https://b.example.com/"},
]


def _document_tokens(batch):
    """Per row, the labelled (scored) token ids."""
    return [row[row != -100].tolist() for row in batch["labels"]]


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tokenizer(512)
    add_context_tokens(tok)
    return tok


def test_conditions_score_the_same_document_tokens_with_max_document_tokens(tokenizer):
    template = metadata_template("url")
    common = dict(max_length=64, padding_side="right")
    probe = MetadataCollator(tokenizer, template, metadata_dropout=0.0, **common)
    budget = 64 - max(doc.prefix_length for doc in probe.encode(DOCS))
    collators = {
        "with url": MetadataCollator(tokenizer, template, metadata_dropout=0.0, max_document_tokens=budget, **common),
        "empty context": MetadataCollator(tokenizer, template, metadata_dropout=1.0, max_document_tokens=budget, **common),
        "plain": MetadataCollator(tokenizer, template, layout="meco", metadata_dropout=1.0, max_document_tokens=budget,
                                  **common),
    }  # fmt: skip
    scored = {name: _document_tokens(c(DOCS)) for name, c in collators.items()}
    assert scored["with url"] == scored["empty context"] == scored["plain"]
    assert len(scored["plain"][0]) == budget and len(scored["plain"][1]) < budget  # the short one is whole
    # without the common cut (as before) the long document lost tokens after the long prefix only
    before = {
        name: _document_tokens(MetadataCollator(tokenizer, template, layout=layout, metadata_dropout=drop, **common)(DOCS))
        for name, layout, drop in (("with url", "context", 0.0), ("plain", "meco", 1.0))
    }  # fmt: skip
    assert len(before["with url"][0]) < len(before["plain"][0])
    with pytest.raises(ValueError, match="max_document_tokens applies to padding mode only"):
        MetadataCollator(tokenizer, template, block_size=64, max_document_tokens=8)
    with pytest.raises(ValueError, match="max_document_tokens must be a positive int"):
        MetadataCollator(tokenizer, template, max_document_tokens=0)


def test_the_recipe_compares_its_three_losses_on_the_same_tokens(tmp_path, monkeypatch):
    from hf_ext.recipes import metadata_pretrain

    seen = {}
    real = metadata_pretrain.document_loss

    def spy(model, collator, docs, batch_size=16):
        seen.setdefault(id(collator), _document_tokens(collator(docs)))
        return real(model, collator, docs, batch_size)

    monkeypatch.setattr(metadata_pretrain, "document_loss", spy)
    results = metadata_pretrain.main([
        "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "4",
        "--block_size", "48", "--per_device_train_batch_size", "4", "--max_eval_docs", "6", "--doc_eval_steps", "2",
        "--logging_steps", "2", "--guidance_max_new_tokens", "2", "--disable_tqdm", "true", "--vocab_size", "512",
        "--max_steps", "2", "--output_dir", str(tmp_path / "run"),
    ])  # fmt: skip
    scored = list(seen.values())
    assert len(scored) >= 3 and all(s == scored[0] for s in scored)  # curves' and final collators alike
    lengths = [len(row) for row in scored[0]]
    assert max(lengths) == results["eval_document_tokens"] < 48  # the held-out documents were cut
    assert torch.isfinite(torch.tensor(list(results["final"].values()))).all()


@pytest.mark.parametrize("fmt", ["{url!x}", "{url} {}", "{url:>{width}}", "{url", "{url.host}", "{0}"])
def test_format_templates_that_fail_on_every_row_are_refused_when_built(fmt):
    """Were accepted: every row then raised inside the collator and trained without metadata."""
    with pytest.raises(ValueError, match="fmt="):
        metadata_template("format", fmt=fmt)
    assert metadata_template("format", fmt="{url!r:>20} | {source}").columns == ("url", "source")


def test_the_recipe_refuses_a_template_failing_on_every_document_before_writing(tmp_path):
    """`{url:d}` is a valid format string, but URLs are strings: the "URL-conditioned" run trained with no metadata
    (its with- and without-context losses were identical, 7.7916) and exited 0."""
    from hf_ext.recipes import metadata_pretrain

    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--template format fails on every one of the first \d+ training documents"):
        metadata_pretrain.main(["--template", "format", "--template_format", "{url:d}", "--max_steps", "2",
                                "--output_dir", str(out), "--vocab_size", "512"])  # fmt: skip
    assert not out.exists()


def test_the_template_check_accepts_data_where_some_rows_fail():
    """Only a template failing on every one of the first rows is refused: one invalid URL among valid ones trains
    that document without metadata, as the collator documents."""
    from datasets import Dataset

    from hf_ext.recipes.metadata_pretrain import _check_template_applies

    template = metadata_template("format", fmt="{score:d}")
    args = type("Args", (), {"template": "format"})
    rows = Dataset.from_list([{"score": "x", "text": "a"}, {"score": "y", "text": "b"}])
    with pytest.raises(ValueError, match="fails on every one of the first 2"):
        _check_template_applies(template, rows, args)
    mixed = Dataset.from_list([{"score": None, "text": "a"}, {"score": 3, "text": "b"}])  # "" fails :d, 3 works
    _check_template_applies(template, mixed, args)
