"""Templates, the token layout, loss masking with both padding sides and with packing, and metadata dropout."""

import pytest
import torch

from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    MetadataCollator,
    MetadataEncoder,
    keeps_metadata,
    metadata_template,
)

ROW = {
    "url": "https://User@En.Wikipedia.org:443/wiki/Bern?action=view#History",
    "topic": "Travel",
    "format": "Encyclopedia",
    "int_score": 3.4,
    "source": "wiki",
    "text": "Bern is the capital.",
}


def test_templates():
    assert metadata_template("url")(ROW) == ROW["url"]
    assert metadata_template("url_host")(ROW) == "en.wikipedia.org:443"
    assert metadata_template("url_path")(ROW) == "/wiki/Bern?action=view#History"
    assert metadata_template("topic_format")(ROW) == "Travel, Encyclopedia"
    assert metadata_template("quality_score")(ROW) == "3"
    assert metadata_template("column", column="source")(ROW) == "wiki"
    assert metadata_template("format", fmt="{source} | {topic}")(ROW) == "wiki | Travel"
    assert metadata_template("url", max_chars=12)(ROW) == ROW["url"][:12]
    assert metadata_template("topic_format")({**ROW, "topic": None}) == ""


def test_url_templates_read_schemeless_urls_as_host_and_path(ctx_tokenizer):
    from hf_ext.metadata import InvalidMetadataError

    host, path = metadata_template("url_host"), metadata_template("url_path")
    cases = {
        "www.site.com/page/1?q=2#f": ("www.site.com", "/page/1?q=2#f"),
        "Site.com:8080/x": ("site.com:8080", "/x"),
        "example.org": ("example.org", ""),
        "//cdn.example.org/a": ("cdn.example.org", "/a"),
        "https://En.Wikipedia.org/wiki/Bern": ("en.wikipedia.org", "/wiki/Bern"),
    }
    for url, (want_host, want_path) in cases.items():
        assert (host({"url": url}), path({"url": url})) == (want_host, want_path), url
    for bad in ("not a url", "/only/a/path", "mailto:someone@example.org", "http://[::1/x"):
        with pytest.raises(InvalidMetadataError):
            host({"url": bad})
    # in the collator scheme-less URLs condition their documents; values without a host are counted as invalid
    rows = [{"text": f"doc {i}", "url": f"www.site{i % 5}.com/page/{i}"} for i in range(20)]
    rows += [{"text": "doc x", "url": "not a url"}, {"text": "doc y", "url": "/only/a/path"}]
    collator = MetadataCollator(ctx_tokenizer, host, metadata_dropout=0.0)
    metadata = collator.metadata_for(rows)
    assert metadata[:20] == [f"www.site{i % 5}.com" for i in range(20)] and metadata[20:] == [None, None]
    assert collator.invalid_metadata == 2


def test_template_errors():
    with pytest.raises(ValueError, match="kind"):
        metadata_template("domain")
    with pytest.raises(ValueError, match="column="):
        metadata_template("column")
    with pytest.raises(ValueError, match="fmt"):
        metadata_template("format")
    with pytest.raises(ValueError, match="2 column"):
        metadata_template("topic_format", column="topic")
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        metadata_template("url")({"text": "x"})


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_context_layout_is_exact(ctx_tokenizer):
    tok = ctx_tokenizer
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    doc = MetadataEncoder(tok).encode_batch(["Bern is the capital."], ["en.wikipedia.org"])[0]
    expected = [
        tok.bos_token_id,
        cb,
        *ids(tok, "en.wikipedia.org"),
        ce,
        *ids(tok, "Bern is the capital."),
        tok.eos_token_id,
    ]
    assert doc.input_ids == expected
    assert doc.prefix_length == len(ids(tok, "en.wikipedia.org")) + 3
    dropped = MetadataEncoder(tok).encode_batch(["Bern"], [None])[0]
    assert dropped.input_ids[:3] == [tok.bos_token_id, cb, ce] and dropped.prefix_length == 3


def test_meco_layout(ctx_tokenizer):
    tok = ctx_tokenizer
    doc = MetadataEncoder(tok, layout="meco").encode_batch(["Bern"], ["en.wikipedia.org"])[0]
    prefix = ids(tok, "URL: en.wikipedia.org\n\n")
    assert doc.input_ids == [tok.bos_token_id, *prefix, *ids(tok, "Bern"), tok.eos_token_id]
    assert doc.prefix_length == 1 + len(prefix)
    plain = MetadataEncoder(tok, layout="meco").encode_batch(["Bern"], [None])[0]
    assert plain.input_ids == [tok.bos_token_id, *ids(tok, "Bern"), tok.eos_token_id] and plain.prefix_length == 1


def test_encoder_needs_context_tokens(small_tokenizer):
    with pytest.raises(ValueError, match="add_context_tokens"):
        MetadataEncoder(small_tokenizer)


def examples(corpus, n=6):
    return [dict(corpus[i]) for i in range(n)]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("layout", ["context", "meco"])
def test_first_supervised_label_is_the_document_start(ctx_tokenizer, corpus, side, layout):
    tok = ctx_tokenizer
    rows = examples(corpus)
    collator = MetadataCollator(
        tok, metadata_template("url_host"), layout=layout, metadata_dropout=0.0, padding_side=side, max_length=96
    )
    batch = collator(rows)
    encoded = MetadataEncoder(tok, layout=layout).encode_batch(
        [r["text"] for r in rows], [metadata_template("url_host")(r) for r in rows]
    )
    for i, doc in enumerate(encoded):
        mask = batch["attention_mask"][i]
        labels = batch["labels"][i]
        real = mask.nonzero().flatten()
        start = int(real[0])
        if side == "right":
            assert start == 0
        else:
            assert int(real[-1]) == mask.numel() - 1
        first_label = int((labels != -100).nonzero()[0])
        assert first_label == start + doc.prefix_length  # exactly the first document token
        assert int(batch["input_ids"][i, first_label]) == doc.input_ids[doc.prefix_length]
        assert batch["input_ids"][i, start : start + doc.prefix_length].tolist() == doc.input_ids[: doc.prefix_length]
        assert (labels[mask == 0] == -100).all()
        assert torch.equal(
            labels[first_label:][mask[first_label:] == 1], batch["input_ids"][i, first_label:][mask[first_label:] == 1]
        )


@pytest.mark.parametrize("layout", ["context", "meco"])
def test_packing_gives_every_chunk_its_context_and_loses_no_token(ctx_tokenizer, corpus, layout):
    tok = ctx_tokenizer
    rows = examples(corpus, 8)
    template = metadata_template("url_host")
    block = 64
    collator = MetadataCollator(tok, template, layout=layout, metadata_dropout=0.0, block_size=block)
    batch = collator(rows)
    assert batch["input_ids"].shape[1] == block and "position_ids" in batch
    encoded = MetadataEncoder(tok, layout=layout).encode_batch([r["text"] for r in rows], [template(r) for r in rows])
    # Walk the rows: segments start where position_ids restart at 0.
    recovered, segments = [], []
    for r in range(batch["input_ids"].shape[0]):
        pos = batch["position_ids"][r].tolist()
        assert "attention_mask" not in batch  # per-document attention (the packing default) comes from positions
        n_real = int((batch["labels"][r] != -100).nonzero().max()) + 1
        starts = [j for j in range(n_real) if pos[j] == 0] + [n_real]
        for a, b in zip(starts, starts[1:]):
            seg_ids = batch["input_ids"][r, a:b].tolist()
            seg_labels = batch["labels"][r, a:b].tolist()
            first = next(k for k, v in enumerate(seg_labels) if v != -100)
            assert all(v == -100 for v in seg_labels[:first]) and all(v != -100 for v in seg_labels[first:])
            segments.append((seg_ids[:first], seg_ids[first:]))
    # a document's first segment starts with its full prefix; a continuation with the context block alone (less BOS,
    # as the reference pipeline's --add-metadata-per-sequence repeats it) in the "context" layout, with the whole
    # prefix in the "meco" layout
    doc_iter = iter(encoded)
    doc = next(doc_iter)
    body = []
    continued = 0
    for prefix, chunk in segments:
        if len(body) == len(doc.input_ids) - doc.prefix_length:
            recovered.append(body)
            doc, body = next(doc_iter), []
        if body and layout == "context":
            assert prefix == doc.input_ids[1 : doc.prefix_length] and tok.bos_token_id not in prefix
            continued += 1
        elif body:
            assert prefix == doc.input_ids[: doc.prefix_length]
            continued += 1
        else:
            assert prefix == doc.input_ids[: doc.prefix_length] and prefix[0] == tok.bos_token_id
        body = body + chunk
    recovered.append(body)
    assert recovered == [d.input_ids[d.prefix_length :] for d in encoded]
    assert continued > 0  # some documents were continued with a repeated context


def test_packing_without_repeated_context(ctx_tokenizer, corpus):
    collator = MetadataCollator(
        ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0, block_size=64, repeat_context=False
    )
    batch = collator(examples(corpus, 3))
    cb = ctx_tokenizer.convert_tokens_to_ids(CONTEXT_BEGIN)
    assert int((batch["input_ids"] == cb).sum()) == 3
    assert int((batch["labels"] != -100).sum()) == sum(
        len(ctx_tokenizer(r["text"], add_special_tokens=False)["input_ids"]) + 1 for r in examples(corpus, 3)
    )


def test_dropout_rate_within_statistical_tolerance():
    n, p = 20000, 0.1
    kept = sum(keeps_metadata(f"document {i}", "https://a.org/", 42, p) for i in range(n))
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs((n - kept) / n - p) < 4 * sigma
    assert keeps_metadata("x", "m", 1, p) == keeps_metadata("x", "m", 1, p)  # deterministic per document
    other_seed = sum(keeps_metadata(f"document {i}", "https://a.org/", 7, p) for i in range(2000))
    assert other_seed != sum(keeps_metadata(f"document {i}", "https://a.org/", 42, p) for i in range(2000))


def test_dropped_documents_keep_the_empty_context_pair(ctx_tokenizer):
    tok = ctx_tokenizer
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    rows = [{"text": f"doc number {i}", "url": f"https://h{i}.org/x"} for i in range(300)]
    collator = MetadataCollator(tok, metadata_template("url_host"), metadata_dropout=0.3, padding_side="right")
    batch = collator(rows)
    empty = [(row[1] == cb and row[2] == ce) for row in batch["input_ids"].tolist()]
    assert 0.2 < sum(empty) / len(rows) < 0.4
    assert all(row[0] == tok.bos_token_id and row[1] == cb for row in batch["input_ids"].tolist())
    assert int((batch["input_ids"] == ce).sum()) == len(rows)


def test_collator_errors(ctx_tokenizer, small_tokenizer, corpus):
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        MetadataCollator(ctx_tokenizer, metadata_template("topic_format"))(examples(corpus, 2))
    with pytest.raises(ValueError, match="text_column"):
        MetadataCollator(ctx_tokenizer, metadata_template("url"), text_column="content")(examples(corpus, 2))
    with pytest.raises(ValueError, match="metadata_dropout"):
        MetadataCollator(ctx_tokenizer, metadata_template("url"), metadata_dropout=1.5)
    for seed in (1.5, True):  # hashed as text: "1.5" / "True" would silently draw other dropouts than seed 1
        with pytest.raises(ValueError, match="seed must be an int"):
            MetadataCollator(ctx_tokenizer, metadata_template("url"), seed=seed)
    with pytest.raises(ValueError, match="not both"):
        MetadataCollator(ctx_tokenizer, metadata_template("url"), block_size=64, max_length=64)
    with pytest.raises(TypeError, match="MetadataTemplate"):
        MetadataCollator(ctx_tokenizer, "url")
    with pytest.raises(ValueError, match="block_size"):
        MetadataCollator(ctx_tokenizer, metadata_template("url"), block_size=8, metadata_dropout=0.0)(
            examples(corpus, 2)
        )
    with pytest.raises(ValueError, match="add_context_tokens"):
        MetadataCollator(small_tokenizer, metadata_template("url"))


def test_document_attention_isolates_packed_documents(ctx_tokenizer):
    from .conftest import tiny_llama

    tok = ctx_tokenizer
    rows = [
        {"text": "short doc one here", "url": "https://a.org/x"},
        {"text": "another short doc", "url": "https://b.org/y"},
    ]
    template = metadata_template("url_host")
    batch = MetadataCollator(tok, template, metadata_dropout=0.0, block_size=64, document_attention=True)(rows)
    assert "attention_mask" not in batch and batch["use_cache"] is False
    enc = MetadataEncoder(tok).encode_batch([r["text"] for r in rows], [template(r) for r in rows])
    model = tiny_llama(len(tok)).eval()
    with torch.no_grad():
        packed = model(**batch).logits[0]
        alone = [model(input_ids=torch.tensor([d.input_ids]), use_cache=False).logits[0] for d in enc]
        leaky_batch = MetadataCollator(tok, template, metadata_dropout=0.0, block_size=64, document_attention=False)(
            rows
        )
        leaky = model(**leaky_batch).logits[0]
    n0, n1 = len(enc[0].input_ids), len(enc[1].input_ids)
    torch.testing.assert_close(packed[:n0], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[n0 : n0 + n1], alone[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(leaky[n0 : n0 + n1], alone[1], atol=1e-3)  # plain packing lets documents attend across
    with pytest.raises(ValueError, match="document_attention"):
        MetadataCollator(tok, template, document_attention=True)


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_overlong_metadata_is_reencoded_from_its_first_50_characters(ctx_tokenizer, mode):
    """As the reference pipeline does: metadata whose prefix fills a whole row falls back to its first 50 characters
    instead of stopping training at that batch."""
    from hf_ext.metadata.collator import OVERLONG_METADATA_CHARS

    long_url = "https://example.org/" + "/".join(f"segment{i}" for i in range(40))
    rows = [{"url": long_url, "text": "A short document."}, {"url": "https://a.org/x", "text": "Another one."}]
    size = {"block_size": 48} if mode == "pack" else {"max_length": 48}
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url"), metadata_dropout=0.0, **size)
    encoder = MetadataEncoder(ctx_tokenizer)
    assert len(encoder.prefix_ids([long_url])[0]) >= 48  # the full URL does not fit ...
    batch = collator(rows)  # ... yet the batch is built
    assert collator.overlong_metadata == 1
    expected = encoder.encode_batch([rows[0]["text"]], [long_url[:OVERLONG_METADATA_CHARS]])[0]
    first = batch["input_ids"][0].tolist()
    if mode == "pad" and collator._side == "left":
        first = first[first.index(ctx_tokenizer.bos_token_id) :]
    assert first[: len(expected.input_ids)] == expected.input_ids
    labels = batch["labels"][0].tolist()
    assert sum(label != -100 for label in labels) >= len(expected.input_ids) - expected.prefix_length
    # a fallback prefix that still leaves no room raises, naming the knobs
    tiny = MetadataCollator(ctx_tokenizer, metadata_template("url"), metadata_dropout=0.0, block_size=8)
    with pytest.raises(ValueError, match="max_metadata_tokens"):
        tiny(rows)


def _tiny_gpt2(vocab_size):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=2, n_positions=1024, initializer_range=0.3)
    )


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("model_kind", ["gpt2", "llama"])
def test_padded_batch_gives_every_document_its_loss_alone(ctx_tokenizer, corpus, side, model_kind):
    """With the collator's defaults a document's loss must not depend on its batch's padding. Left padding used to
    drop the (correct) position_ids, so GPT-2's learned absolute positions counted from the first pad column and a
    left-padded document's loss moved by ~0.03; Llama (rotary, relative) was unaffected."""
    from .conftest import tiny_llama

    tok = ctx_tokenizer
    model = (_tiny_gpt2(len(tok)) if model_kind == "gpt2" else tiny_llama(len(tok))).eval()
    rows = examples(corpus, 3)
    for row, chars in zip(rows, (60, 400, 200)):  # different lengths: the batch is padded
        row["text"] = row["text"][:chars]
    collator = MetadataCollator(tok, metadata_template("url"), metadata_dropout=0.0, padding_side=side)

    def doc_losses(batch):
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        mask = labels != -100
        return (ce * mask).sum(1) / mask.sum(1)

    batch = collator(rows)
    assert (batch["attention_mask"] == 0).any()
    alone = torch.cat([doc_losses(collator([row])) for row in rows])
    torch.testing.assert_close(doc_losses(batch), alone, rtol=0, atol=1e-5)
    assert ("position_ids" in batch) == (side == "left")  # right padding keeps its former keys
