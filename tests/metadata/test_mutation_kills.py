"""Checks against independent references (closed forms, urllib, a float64 guidance loop, an uninterrupted run) for
behaviour the other metadata tests left open: padded positions, truncation and padding lengths, the no-room rule of
packing, the over-long metadata fallback at its boundary, template values, batched guidance with several return
sequences, guidance settings coming from a generation_config, and cooldown resume across epochs."""

import json
import math
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import torch

from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    MetadataCollator,
    MetadataCooldownCallback,
    MetadataEncoder,
    build_guidance_inputs,
    generate_with_metadata_guidance,
    metadata_template,
)

from .conftest import tiny_llama

ROWS = [
    {"text": "a short one", "url": "https://a.org/x"},
    {"text": "a much longer document with many more words in it than the first", "url": "https://bb.example.com/y"},
    {"text": "middle sized text here", "url": "https://c.net/z?q=1"},
]


def _ids(tok, text):
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_position_ids_count_from_each_document_start(ctx_tokenizer, side):
    """Reference: generate()'s convention, positions = cumsum(attention_mask) - 1 on real tokens."""
    batch = MetadataCollator(
        ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0, padding_side=side, return_position_ids=True
    )(ROWS)
    mask = batch["attention_mask"]
    assert (mask == 0).any()  # the rows are padded
    reference = mask.cumsum(-1) - 1
    real = mask == 1
    assert torch.equal(batch["position_ids"][real], reference[real])


def test_max_length_cuts_rows_and_pad_to_multiple_of_rounds_up(ctx_tokenizer):
    tok, template = ctx_tokenizer, metadata_template("url_host")
    docs = MetadataEncoder(tok).encode_batch([r["text"] for r in ROWS], [template(r) for r in ROWS])
    limit = 14
    assert max(len(d.input_ids) for d in docs) > limit > max(d.prefix_length for d in docs)
    batch = MetadataCollator(tok, template, metadata_dropout=0.0, padding_side="right", max_length=limit)(ROWS)
    assert batch["input_ids"].shape[1] == limit
    for i, d in enumerate(docs):
        kept = d.input_ids[:limit]
        n = len(kept)
        assert batch["input_ids"][i, :n].tolist() == kept
        assert batch["labels"][i, :n].tolist() == [-100] * d.prefix_length + kept[d.prefix_length :]
    longest = max(len(d.input_ids) for d in docs)
    for multiple in (4, 5, 7, 64):
        batch = MetadataCollator(tok, template, metadata_dropout=0.0, pad_to_multiple_of=multiple)(ROWS)
        assert batch["input_ids"].shape[1] == math.ceil(longest / multiple) * multiple, multiple


def test_packing_never_leaves_a_context_without_a_document_token(ctx_tokenizer):
    """At every block size: each packed segment carries at least one supervised token, and the supervised tokens are
    exactly the documents' bodies (no context-only segment at the end of a row)."""
    tok, template = ctx_tokenizer, metadata_template("url_host")
    rows = ROWS * 2
    docs = MetadataEncoder(tok).encode_batch([r["text"] for r in rows], [template(r) for r in rows])
    bodies = sum(len(d.input_ids) - d.prefix_length for d in docs)
    assert tok.pad_token_id != tok.bos_token_id
    collator = MetadataCollator(tok, template, metadata_dropout=0.0, block_size=64)
    for size in range(max(d.prefix_length for d in docs) + 1, 40):
        collator.block_size = size
        batch = collator(rows)
        assert int((batch["labels"] != -100).sum()) == bodies, size
        for r, pos in enumerate(batch["position_ids"].tolist()):
            ids, labels = batch["input_ids"][r].tolist(), batch["labels"][r].tolist()
            starts = [j for j in range(size) if pos[j] == 0] + [size]
            for a, b in zip(starts, starts[1:]):  # document segments start with BOS (padding is pad tokens)
                if ids[a] == tok.bos_token_id:
                    assert any(v != -100 for v in labels[a:b]), (size, r, a, b)


@pytest.mark.parametrize("mode", ["block_size", "max_length"])
def test_overlong_fallback_starts_exactly_when_the_prefix_fills_the_row(ctx_tokenizer, mode):
    """The pipeline's rule: metadata whose prefix leaves no document token in the row is re-encoded from its first 50
    characters; one token more room keeps the full metadata."""
    tok = ctx_tokenizer
    url = "https://example.org/" + "/".join(f"part{i}" for i in range(12))
    rows = [{"url": url, "text": "A short document."}]
    encoder = MetadataEncoder(tok)
    full_prefix = encoder.prefix_ids([url])[0]
    short = encoder.encode_batch(["A short document."], [url[:50]])[0]
    assert len(url) > 50 and short.prefix_length < len(full_prefix)
    fills = MetadataCollator(
        tok, metadata_template("url"), metadata_dropout=0.0, padding_side="right", **{mode: len(full_prefix)}
    )
    batch = fills(rows)
    assert fills.overlong_metadata == 1
    assert batch["input_ids"][0, : short.prefix_length].tolist() == short.input_ids[: short.prefix_length]
    fits = MetadataCollator(
        tok, metadata_template("url"), metadata_dropout=0.0, padding_side="right", **{mode: len(full_prefix) + 1}
    )
    batch = fits(rows)
    assert fits.overlong_metadata == 0
    assert batch["input_ids"][0, : len(full_prefix)].tolist() == full_prefix
    assert int(batch["labels"][0, len(full_prefix)]) == short.input_ids[short.prefix_length]  # first document token


def test_max_metadata_tokens_keeps_the_first_tokens_in_the_context_layout(ctx_tokenizer):
    tok = ctx_tokenizer
    url = "https://data-formats.docs.python.org/3/library/xml.sax.saxutils.html"
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    meta = _ids(tok, url)
    for limit in (1, 5, len(meta) + 3):
        prefix = MetadataEncoder(tok, max_metadata_tokens=limit).prefix_ids([url])[0]
        assert prefix == [tok.bos_token_id, cb, *meta[:limit], ce], limit


def test_url_host_matches_urllib_and_scores_are_rounded():
    urls = [
        "https://user:pw@Host.Example.org:8080/a/b?c=d#e",
        "http://a@b@evil.org/x",
        "HTTP://WWW.Site.COM",
        "https://en.wikipedia.org/wiki/Bern",
        "ftp://files.example.net:21/pub",
    ]
    host = metadata_template("url_host")
    for url in urls:
        parts = urlsplit(url)
        want = parts.hostname + (f":{parts.port}" if parts.port is not None else "")
        assert host({"url": url}) == want, url
    score = metadata_template("quality_score")
    cases = {2.6: "3", 2.4: "2", 3.51: "4", "4.0": "4", 1: "1", 0.2: "0"}
    for value, want in cases.items():
        assert score({"int_score": value}) == want, value


def _scaled_llama(tok, seed=1):
    """A random tiny Llama with sharp distributions (larger weights), so guidance changes the scores visibly."""
    model = tiny_llama(len(tok), seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(6.0)
    return model.eval()


def test_guided_scores_match_a_float64_cfg_reference_for_every_return_sequence(ctx_tokenizer):
    """Each returned row is guided by its own prompt's empty-context prompt, at every step (cached branches):
    score = log_softmax(uncond) + g * (log_softmax(cond) - log_softmax(uncond)), recomputed from scratch in float64."""
    tok = ctx_tokenizer
    model = _scaled_llama(tok)
    prompts, meta = ["the river", "a much longer prompt of words"], ["a.org", "https://b.net/x"]
    g, n_ret, steps = 2.5, 2, 3
    torch.manual_seed(0)
    out = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=g, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
        num_return_sequences=n_ret, max_new_tokens=steps, return_text=False, output_scores=True,
        return_dict_in_generate=True, suppress_context_tokens=False,
    )  # fmt: skip
    inputs = build_guidance_inputs(tok, prompts, meta)
    plen = inputs["input_ids"].shape[1]
    assert out.sequences.shape[0] == len(prompts) * n_ret
    for row in range(out.sequences.shape[0]):
        i = row // n_ret  # generate() expands each prompt n_ret times in place
        cond = inputs["input_ids"][i][inputs["attention_mask"][i] == 1].tolist()
        uncond = inputs["negative_prompt_ids"][i][inputs["negative_prompt_attention_mask"][i] == 1].tolist()
        for t in range(len(out.scores)):
            new = out.sequences[row, plen : plen + t].tolist()
            with torch.no_grad():
                lc = torch.log_softmax(model(torch.tensor([cond + new])).logits[0, -1].double(), -1)
                lu = torch.log_softmax(model(torch.tensor([uncond + new])).logits[0, -1].double(), -1)
            expected = lu + g * (lc - lu)
            torch.testing.assert_close(out.scores[t][row].double(), expected, rtol=0, atol=2e-4, msg=f"{row} {t}")


def test_guidance_refuses_beam_search_and_assisted_decoding(ctx_tokenizer):
    """transformers' guidance processor keeps the unconditional branch in batch order and does not follow beam
    reordering (or drafts of assisted decoding): with guidance these modes would be silently wrong, so they raise."""
    from transformers import GenerationConfig

    tok = ctx_tokenizer
    model = _scaled_llama(tok)
    common = dict(max_new_tokens=2, do_sample=False, return_text=False)
    with pytest.raises(ValueError, match="num_beams"):
        generate_with_metadata_guidance(model, tok, ["the"], ["a.org"], guidance_scale=2.0, num_beams=2, **common)
    with pytest.raises(ValueError, match="num_beams"):
        generate_with_metadata_guidance(
            model, tok, ["the"], ["a.org"], guidance_scale=2.0, generation_config=GenerationConfig(num_beams=3),
            max_new_tokens=2, return_text=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        generate_with_metadata_guidance(
            model, tok, ["the"], ["a.org"], guidance_scale=2.0, prompt_lookup_num_tokens=2, **common
        )
    # without guidance beam search is plain conditional beam search
    out = generate_with_metadata_guidance(model, tok, ["the"], ["a.org"], guidance_scale=1.0, num_beams=2, **common)
    assert out.shape[0] == 1


def test_guidance_scale_one_overrides_a_generation_config_with_guidance(ctx_tokenizer):
    """guidance_scale=1 is plain conditional generation even if the passed generation_config asks for guidance."""
    from transformers import GenerationConfig

    tok = ctx_tokenizer
    model = _scaled_llama(tok)
    prompts, meta = ["the river flows"], ["https://a.org/x"]
    config = GenerationConfig(guidance_scale=4.0, max_new_tokens=6, do_sample=False)
    out = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=1.0, generation_config=config, return_text=False
    )
    inputs = build_guidance_inputs(tok, prompts, meta)
    blocked = sorted({tok.bos_token_id, *tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])})
    cond, steps = inputs["input_ids"][0].tolist(), []
    for _ in range(6):  # greedy decoding by hand, conditional only
        with torch.no_grad():
            logits = model(torch.tensor([cond])).logits[0, -1]
        logits[blocked] = -float("inf")
        steps.append(int(logits.argmax()))
        cond.append(steps[-1])
    assert out[0, inputs["input_ids"].shape[1] :].tolist() == steps
    assert config.guidance_scale == 4.0  # the caller's config is not modified


class _SizedStream(torch.utils.data.IterableDataset):
    """An IterableDataset with a length: the Trainer knows its epochs and fast-forwards the resumed one."""

    def __init__(self, rows):
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)


def test_resumed_cooldown_across_epochs_of_a_sized_stream(ctx_tokenizer, corpus, tmp_path):
    """16 documents, batches of 2, 2 accumulation steps: 4 optimizer steps per epoch, 8 steps, switch after step 6.
    Resumed at step 3 (the run crosses into epoch 2) or at step 6 (inside epoch 2) every micro-batch is conditioned as
    in the uninterrupted run (closed form: steps 1-6 with metadata, 7-8 without)."""
    from .test_training import RecordingTrainer, make_trainer

    tok = ctx_tokenizer
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    docs = _SizedStream([{"text": r["text"], "url": r["url"]} for r in corpus.select(range(16))])
    kwargs = dict(max_steps=8, cls=RecordingTrainer, cb_id=cb, ce_id=ce, save_steps=3, batch_size=2)
    full, callback = make_trainer(tok, docs, tmp_path / "full", **kwargs)
    full.train()
    assert callback.switch_step == 6
    assert {s: all(f) for s, f in full.seen.items()} == {s: s <= 6 for s in range(1, 9)}
    assert all(len(set(f)) == 1 for f in full.seen.values())
    for resume_at in (3, 6):
        resumed, _ = make_trainer(tok, docs, tmp_path / f"resumed{resume_at}", **kwargs)
        resumed.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{resume_at}"))
        assert resumed.seen == {s: f for s, f in full.seen.items() if s > resume_at}, resume_at


def _started_callback(tokenizer, output_dir, grad_accum: int, global_step: int):
    """A cooldown callback (30% of 10 steps) after `on_train_begin`, with stand-ins for the Trainer's args/state."""
    collator = MetadataCollator(tokenizer, metadata_template("url_host"))
    callback = MetadataCooldownCallback(collator, cooldown_fraction=0.3)
    args = SimpleNamespace(
        output_dir=str(output_dir), gradient_accumulation_steps=grad_accum, dataloader_num_workers=0,
        ignore_data_skip=False,
    )  # fmt: skip
    state = SimpleNamespace(max_steps=10, global_step=global_step, is_world_process_zero=True)
    callback.on_train_begin(args, state, None)
    return collator, callback, args, state


def test_checkpoint_state_says_whether_the_next_step_is_conditioned(ctx_tokenizer, tmp_path):
    collator, callback, args, state = _started_callback(ctx_tokenizer, tmp_path, grad_accum=2, global_step=0)
    assert callback.switch_step == 7 and collator.cooldown_start_batch == 14
    for step, expected in ((6, True), (7, False), (8, False)):
        state.global_step = step
        (tmp_path / f"checkpoint-{step}").mkdir()
        callback.on_save(args, state, None)
        saved = json.loads((tmp_path / f"checkpoint-{step}" / "metadata_conditioning.json").read_text())
        assert saved["conditioning_next_step"] is expected, step
        assert saved["switch_step"] == 7 and saved["global_step"] == step


def test_checkpoint_state_file_is_written_atomically(ctx_tokenizer, tmp_path):
    """The state file was written with a plain `open`: a failure while writing left a truncated JSON in the
    checkpoint; now the file is either complete or absent."""
    collator, callback, args, state = _started_callback(ctx_tokenizer, tmp_path, grad_accum=1, global_step=4)
    (tmp_path / "checkpoint-4").mkdir()
    collator.seed = object()  # not JSON-serialisable: the dump fails after writing part of the file
    with pytest.raises(TypeError):
        callback.on_save(args, state, None)
    assert sorted(p.name for p in (tmp_path / "checkpoint-4").iterdir()) == []


def test_evaluation_inside_an_epoch_does_not_move_the_switch(ctx_tokenizer, corpus, tmp_path):
    """48 documents in batches of 2 with 2 accumulation steps: 12 steps per epoch, so no epoch start resyncs the
    counter before the switch (after step 7 of 10). Evaluations at steps 3 and 6 collate 2 batches each with the same
    collator; the closed form still holds: steps 1-7 with metadata, 8-10 without."""
    from .test_training import RecordingTrainer, make_trainer

    tok = ctx_tokenizer
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    docs = corpus.select(range(48)).select_columns(["text", "url"])
    trainer, callback = make_trainer(
        tok, docs, tmp_path, cls=RecordingTrainer, cb_id=cb, ce_id=ce, batch_size=2, eval_docs=docs.select(range(12))
    )
    trainer.train()
    assert callback.switch_step == 7
    assert trainer.seen == {s: [s <= 7] * 2 for s in range(1, 11)}
