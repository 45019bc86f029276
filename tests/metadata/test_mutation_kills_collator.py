"""Collator, encoder, template and cooldown behaviours pinned against hand counts and closed forms: full dropout and
conditioning off, prefixes that fill a row, how packed rows fill, MeCo prefix cutting, context
token registration, URL edge cases, score validation, and the cooldown callback's switch and resume arithmetic."""

import json
import math
import signal
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    InvalidMetadataError,
    MetadataCollator,
    MetadataCooldownCallback,
    MetadataEncoder,
    add_context_tokens,
    keeps_metadata,
    metadata_template,
)

from .conftest import tiny_llama

ROWS = [
    {"text": "first document with a few words", "url": "https://a.org/x"},
    {"text": "second", "url": "https://bb.example.com/y"},
    {"text": "the third document is the longest one of all of them by far", "url": "https://c.net/z"},
]


def _ids(tok, text):
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


@contextmanager
def _deadline(seconds):
    """Fail (instead of hanging) if the block does not return within `seconds`."""

    def _raise(signum, frame):
        raise TimeoutError(f"did not return within {seconds}s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------------ dropout, conditioning
def test_full_dropout_trains_every_document_without_metadata(ctx_tokenizer):
    """metadata_dropout=1.0 means no document keeps its metadata: every row starts [BOS, begin, end]."""
    tok = ctx_tokenizer
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    rows = [{"text": f"doc {i}", "url": f"https://h{i}.org/"} for i in range(50)]
    assert not any(keeps_metadata(r["text"], r["url"], 42, 1.0) for r in rows)
    batch = MetadataCollator(tok, metadata_template("url"), metadata_dropout=1.0, padding_side="right")(rows)
    assert batch["input_ids"][:, :3].tolist() == [[tok.bos_token_id, cb, ce]] * len(rows)
    assert all(keeps_metadata(r["text"], r["url"], 42, 0.0) for r in rows)


@pytest.mark.parametrize("layout", ["context", "meco"])
def test_conditioning_off_gives_every_document_the_unconditional_form(ctx_tokenizer, layout):
    """conditioning=False: the layout's unconditional form ([BOS] <begin><end> doc / [BOS] doc) for every document,
    also with metadata_dropout=0."""
    tok = ctx_tokenizer
    collator = MetadataCollator(
        tok, metadata_template("url_host"), layout=layout, metadata_dropout=0.0, padding_side="right",
        conditioning=False,
    )  # fmt: skip
    assert collator.conditioning_active is False
    batch = collator(ROWS)
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    head = [tok.bos_token_id, cb, ce] if layout == "context" else [tok.bos_token_id]
    for i, row in enumerate(ROWS):
        want = head + _ids(tok, row["text"]) + [tok.eos_token_id]
        assert batch["input_ids"][i, : len(want)].tolist() == want
        assert batch["labels"][i, : len(want)].tolist() == [-100] * len(head) + want[len(head) :]


# ------------------------------------------------------------------------------------------------ rows and lengths
@pytest.mark.parametrize("mode", ["max_length", "block_size"])
def test_a_prefix_that_fills_the_whole_row_is_refused(ctx_tokenizer, mode):
    """A document without metadata has the 3-token prefix [BOS, begin, end]: a 3-token row leaves no room for any
    document token and must raise; a 4-token row holds one document token in its first row and two in each continued
    row (which repeats [begin, end] without BOS)."""
    tok = ctx_tokenizer
    rows = [{"text": "a b c", "url": None}]
    with _deadline(20):
        with pytest.raises(ValueError, match="max_metadata_tokens"):
            MetadataCollator(tok, metadata_template("url"), metadata_dropout=0.0, **{mode: 3})(rows)
        batch = MetadataCollator(tok, metadata_template("url"), metadata_dropout=0.0, padding_side="right",
                                 **{mode: 4})(rows)  # fmt: skip
    body = _ids(tok, "a b c") + [tok.eos_token_id]
    supervised = batch["labels"][batch["labels"] != -100].tolist()
    if mode == "max_length":
        assert supervised == body[:1]  # cut to one document token
    else:
        assert supervised == body  # nothing lost
        assert batch["input_ids"].shape == (1 + math.ceil((len(body) - 1) / 2), 4)


@pytest.mark.parametrize("document_attention", [True, False])
def test_packed_rows_are_filled_before_a_new_row_starts(ctx_tokenizer, document_attention):
    """One long document packed into rows of `size` with its context repeated: the first row is its prefix and
    `size - prefix` body tokens, each continued row the prefix without BOS and `size - prefix + 1` body tokens; every
    row but the last is full, and only the last row has padding, which is masked out (attention 0 and label -100)."""
    tok = ctx_tokenizer
    row = {"text": " ".join(f"w{i}" for i in range(60)), "url": "https://a.org/"}
    doc = MetadataEncoder(tok).encode_batch([row["text"]], ["a.org"])[0]
    prefix, body = doc.input_ids[: doc.prefix_length], doc.input_ids[doc.prefix_length :]
    assert prefix[0] == tok.bos_token_id
    size = next(n for n in range(16, 24) if (len(body) - (n - len(prefix))) % (n - len(prefix) + 1))  # last partial
    heads = [prefix] + [prefix[1:]] * len(body)  # the first row's header, then the continued rows'
    batch = MetadataCollator(
        tok, metadata_template("url_host"), metadata_dropout=0.0, block_size=size, document_attention=document_attention
    )([row])
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    n_rows = 1 + math.ceil((len(body) - (size - len(prefix))) / (size - len(prefix) + 1))
    assert len(ids) == n_rows
    start = 0
    for r in range(n_rows):
        head = heads[r]
        chunk = body[start : start + size - len(head)]
        start += len(chunk)
        n_pad = size - len(head) - len(chunk)
        assert ids[r] == head + chunk + [tok.pad_token_id] * n_pad, r
        assert labels[r] == [-100] * len(head) + chunk + [-100] * n_pad, r
        if r < n_rows - 1:
            assert n_pad == 0
    assert start == len(body)
    if not document_attention:
        n_last = size - n_pad
        mask = batch["attention_mask"].tolist()
        assert mask[:-1] == [[1] * size] * (n_rows - 1)
        assert mask[-1] == [1] * n_last + [0] * (size - n_last)


@pytest.mark.parametrize("side", ["left", "right"])
def test_return_position_ids_false_drops_them_in_padding_mode(ctx_tokenizer, side):
    """Padding mode: position_ids come by default only with left padding; an explicit True or False wins."""
    tok, template = ctx_tokenizer, metadata_template("url_host")
    default = MetadataCollator(tok, template, metadata_dropout=0.0, padding_side=side)(ROWS)
    assert ("position_ids" in default) == (side == "left")
    off = MetadataCollator(tok, template, metadata_dropout=0.0, padding_side=side, return_position_ids=False)(ROWS)
    assert "position_ids" not in off and set(off) == {"input_ids", "attention_mask", "labels"}
    on = MetadataCollator(tok, template, metadata_dropout=0.0, padding_side=side, return_position_ids=True)(ROWS)
    assert "position_ids" in on


# ------------------------------------------------------------------------------------------------ encoder
def test_meco_prefix_cut_keeps_the_head_and_the_closing_separator(ctx_tokenizer):
    """max_metadata_tokens in the MeCo layout: the prefix text "URL: {m}" is cut to the limit less the separator's
    tokens, then the "\\n\\n" separator closes it; the document follows the separator."""
    tok = ctx_tokenizer
    meta = "some.very.long.host.name.example.org"
    full = _ids(tok, f"URL: {meta}\n\n")
    head, tail = _ids(tok, f"URL: {meta}"), _ids(tok, "\n\n")
    for limit in (len(tail) + 1, len(tail) + 3, len(full) - 1):
        doc = MetadataEncoder(tok, layout="meco", max_metadata_tokens=limit).encode_batch(["Bern"], [meta])[0]
        want = [tok.bos_token_id, *head[: limit - len(tail)], *tail]
        assert doc.input_ids[: doc.prefix_length] == want, limit
        assert doc.input_ids[doc.prefix_length :] == _ids(tok, "Bern") + [tok.eos_token_id]
    uncut = MetadataEncoder(tok, layout="meco", max_metadata_tokens=len(full)).encode_batch(["Bern"], [meta])[0]
    assert uncut.input_ids[: uncut.prefix_length] == [tok.bos_token_id, *full]
    with pytest.raises(ValueError, match="max_metadata_tokens"):
        MetadataEncoder(tok, layout="meco", max_metadata_tokens=len(tail))


def test_encoder_refuses_a_tokenizer_whose_markers_text_can_forge():
    """Markers added as ordinary (non-special) tokens are not split by split_special_tokens: a document spelling
    "<|context_end|>" would produce the marker id, so the encoder refuses such a tokenizer."""
    from hf_ext.data import build_tokenizer

    tok = build_tokenizer(300, texts=["alpha beta gamma delta"] * 20)
    tok.add_tokens([CONTEXT_BEGIN, CONTEXT_END])
    end = tok.convert_tokens_to_ids(CONTEXT_END)
    assert end in _ids(tok, f"{CONTEXT_END} text")  # the leak the check is about
    with pytest.raises(ValueError, match="split_special_tokens"):
        MetadataEncoder(tok)


def test_add_context_tokens_keeps_other_special_tokens_and_resizes_the_model():
    from hf_ext.data import build_tokenizer

    tok = build_tokenizer(300, texts=["alpha beta gamma delta"] * 20)
    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    model = tiny_llama(len(tok))
    begin, end = add_context_tokens(tok, model)
    assert "<|tool|>" in tok.all_special_tokens
    assert {CONTEXT_BEGIN, CONTEXT_END} <= set(tok.all_special_tokens)
    assert (begin, end) == tuple(tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END]))
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    assert add_context_tokens(tok, model) == (begin, end)  # idempotent


# ------------------------------------------------------------------------------------------------ templates
def test_url_edge_cases():
    host, path = metadata_template("url_host"), metadata_template("url_path")
    assert host({"url": "site.com:8080"}) == "site.com:8080" and path({"url": "site.com:8080"}) == ""
    assert path({"url": "/only/a/path?q=1"}) == "/only/a/path?q=1"
    assert host({"url": ""}) == "" and path({"url": ""}) == ""


def test_quality_scores_reject_bools_and_infinities():
    score = metadata_template("quality_score")
    for bad in (True, False, float("inf"), float("-inf"), "inf", "nan"):
        with pytest.raises(InvalidMetadataError):
            score({"int_score": bad})
    assert score({"int_score": float("nan")}) == ""  # pandas' missing cell: no metadata, like None


def test_format_template_renders_missing_values_as_empty_and_columns_must_match_the_kind():
    fmt = metadata_template("format", fmt="{source}|{url}")
    assert fmt({"source": None, "url": "u"}) == "|u"
    with pytest.raises(ValueError, match="column"):
        metadata_template("url", column=["url", "other"])
    with pytest.raises(ValueError, match="column"):
        metadata_template("topic_format", column=["topic", "format", "extra"])


# ------------------------------------------------------------------------------------------------ cooldown callback
def _args(tmp_path, grad_accum=1):
    return SimpleNamespace(
        output_dir=str(tmp_path), gradient_accumulation_steps=grad_accum, dataloader_num_workers=0,
        ignore_data_skip=False, resume_from_checkpoint=None,
    )  # fmt: skip


def test_switch_step_rounds_the_cooldown_length(ctx_tokenizer, tmp_path):
    """switch_step = max_steps - round(fraction * max_steps): 0.18 of 10 steps is 2 steps of cooldown (not 1)."""
    for fraction, max_steps, want in ((0.18, 10, 8), (0.29, 10, 7), (0.07, 30, 28)):
        collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"))
        callback = MetadataCooldownCallback(collator, cooldown_fraction=fraction)
        state = SimpleNamespace(max_steps=max_steps, global_step=0, is_world_process_zero=True)
        callback.on_train_begin(_args(tmp_path, grad_accum=3), state, None)
        assert callback.switch_step == want and collator.cooldown_start_batch == 3 * want, fraction


class _SizedStream(torch.utils.data.IterableDataset):
    """An IterableDataset with a length (the Trainer then knows its epochs)."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def test_resume_counter_subtracts_the_fast_forwarded_batches_of_an_uneven_epoch(ctx_tokenizer, tmp_path):
    """An iterable dataset of 7 batches with 2 accumulation steps has ceil(7/2) = 4 optimizer steps an epoch. Resumed
    at step 5 (1 step into epoch 2) the Trainer collates and drops 1 * 2 batches, so the collator's counter starts at
    5 * 2 - 2 = 8 and reaches 10 after them; at the next epoch start (step 8) it is 8 * 2 = 16 again."""
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"))
    callback = MetadataCooldownCallback(collator, cooldown_fraction=0.5)
    loader = torch.utils.data.DataLoader(_SizedStream(7), batch_size=None)
    assert len(loader) == 7
    args = _args(tmp_path, grad_accum=2)
    state = SimpleNamespace(max_steps=12, global_step=5, is_world_process_zero=True)
    callback.on_train_begin(args, state, None, train_dataloader=loader)
    assert collator.batches_seen == 5 * 2 - 1 * 2
    callback.on_epoch_begin(args, state, None)  # the Trainer starts the resumed epoch
    assert collator.batches_seen == 5 * 2 - 1 * 2
    state.global_step = 8
    callback.on_epoch_begin(args, state, None)
    assert collator.batches_seen == 16


def test_checkpoint_state_records_dropout_and_seed_and_only_rank_zero_writes(ctx_tokenizer, tmp_path):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.25, seed=7)
    callback = MetadataCooldownCallback(collator, cooldown_fraction=0.2)
    args = _args(tmp_path)
    state = SimpleNamespace(max_steps=10, global_step=3, is_world_process_zero=False)
    callback.on_train_begin(args, state, None)
    (tmp_path / "checkpoint-3").mkdir()
    callback.on_save(args, state, None)
    assert not (tmp_path / "checkpoint-3" / "metadata_conditioning.json").exists()
    state.is_world_process_zero = True
    callback.on_save(args, state, None)
    saved = json.loads((tmp_path / "checkpoint-3" / "metadata_conditioning.json").read_text())
    assert saved["metadata_dropout"] == 0.25 and saved["seed"] == 7
    assert saved["switch_step"] == 8 and saved["global_step"] == 3 and saved["cooldown_fraction"] == 0.2


def test_invalid_count_is_not_read_from_a_state_file_of_another_step(ctx_tokenizer, tmp_path):
    """Resuming at step 4 reads metadata_invalid only from a state file written at step 4."""
    (tmp_path / "checkpoint-4").mkdir()
    state_file = tmp_path / "checkpoint-4" / "metadata_conditioning.json"
    for saved_step, want in ((3, 0), (4, 7)):
        state_file.write_text(json.dumps({"global_step": saved_step, "metadata_invalid": 7}))
        collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"))
        callback = MetadataCooldownCallback(collator, cooldown_fraction=0.2)
        state = SimpleNamespace(max_steps=10, global_step=4, is_world_process_zero=True)
        callback.on_train_begin(_args(tmp_path), state, None)
        assert callback.invalid_total == want, saved_step


def test_invalid_examples_are_counted_per_optimizer_step_after_a_fast_forwarded_resume(ctx_tokenizer, tmp_path):
    """An iterable dataset of 8 batches, 2 accumulation steps: 4 steps an epoch. Resumed at step 5 with 7 invalid
    examples stored, the Trainer re-collates batches 8 and 9 (step 5, already counted) and drops them; steps 6 is
    batches 10 and 11; batch 12 is prepared ahead for step 7. After step 6 the count is 7 + the invalid examples of
    batches 10 and 11 only."""
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "metadata_conditioning.json").write_text(
        json.dumps({"global_step": 5, "metadata_invalid": 7})
    )
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0, max_length=32)
    callback = MetadataCooldownCallback(collator, cooldown_fraction=0.2)
    args = _args(tmp_path, grad_accum=2)
    state = SimpleNamespace(max_steps=12, global_step=5, is_world_process_zero=True)
    loader = torch.utils.data.DataLoader(_SizedStream(8), batch_size=None)
    callback.on_train_begin(args, state, None, train_dataloader=loader)
    assert collator.batches_seen == 8 and callback.invalid_total == 7
    bad = {"text": "x", "url": "http://[::1/x"}
    good = {"text": "y", "url": "https://a.org/"}
    # batches 8, 9 (fast-forwarded), 10, 11 (step 6), 12 (ahead)
    for invalid in (5, 5, 1, 2, 4):
        collator([bad] * invalid + [good])
    state.global_step = 6
    callback.on_step_end(args, state, None)
    assert callback.invalid_total == 7 + 1 + 2


def test_zero_cooldown_sets_no_switch_point(ctx_tokenizer, tmp_path):
    """cooldown_fraction=0 never switches: the collator gets no switch batch (so it may also collate in DataLoader
    workers) and every step is conditioned."""
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"))
    callback = MetadataCooldownCallback(collator, cooldown_fraction=0.0)
    state = SimpleNamespace(max_steps=10, global_step=0, is_world_process_zero=True)
    callback.on_train_begin(_args(tmp_path, grad_accum=2), state, None)
    assert collator.cooldown_start_batch is None
    assert all(callback.conditioning_at(step) for step in range(1, 11))
    collator.batches_seen = 10 * 2
    assert collator.conditioning_active


def test_metadata_for_follows_the_collators_conditioning_state(ctx_tokenizer):
    """`metadata_for` without `active` gives no metadata when conditioning is off or the cooldown has started, and
    the template's values otherwise; an explicit `active` wins."""
    template = metadata_template("url_host")
    on = MetadataCollator(ctx_tokenizer, template, metadata_dropout=0.0)
    assert on.metadata_for(ROWS) == ["a.org", "bb.example.com", "c.net"]
    assert on.metadata_for(ROWS, active=False) == [None] * 3
    off = MetadataCollator(ctx_tokenizer, template, metadata_dropout=0.0, conditioning=False)
    assert off.metadata_for(ROWS) == [None] * 3
    assert off.metadata_for(ROWS, active=True) == ["a.org", "bb.example.com", "c.net"]
    cooled = MetadataCollator(ctx_tokenizer, template, metadata_dropout=0.0)
    cooled.cooldown_start_batch, cooled.batches_seen = 2, 2
    assert cooled.metadata_for(ROWS) == [None] * 3
    assert cooled.batches_seen == 2
