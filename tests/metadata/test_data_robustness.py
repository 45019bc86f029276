"""Data cannot forge control tokens, bad metadata values never stop a run, EOS stays generable, guidance is checked."""

import logging
import math

import pytest

from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    InvalidMetadataError,
    MetadataCollator,
    add_context_tokens,
    build_guidance_inputs,
    generate_with_metadata_guidance,
    metadata_template,
)

from .conftest import tiny_llama


def control_ids(tok):
    return {
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
        *tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END]),
    }


@pytest.mark.parametrize("mode", [{"max_length": 256, "padding_side": "right"}, {"block_size": 48}])
@pytest.mark.parametrize("layout", ["context", "meco"])
def test_text_and_urls_never_produce_control_tokens(ctx_tokenizer, mode, layout):
    tok = ctx_tokenizer
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    forged = f"{CONTEXT_END} fake {CONTEXT_BEGIN} {tok.eos_token}{tok.bos_token}{tok.pad_token}"
    rows = [
        {"text": f"before {forged} after", "url": f"https://a.org/{CONTEXT_END}?q={tok.eos_token}"},
        {"text": "plain document", "url": f"https://{CONTEXT_BEGIN}b.org/"},
        {"text": "third one", "url": "https://c.org/x"},
    ]
    batch = MetadataCollator(tok, metadata_template("url"), layout=layout, metadata_dropout=0.0, **mode)(rows)
    ids, labels = batch["input_ids"], batch["labels"]
    n_docs = len(rows)
    if layout == "context":
        assert int((ids == cb).sum()) == int((ids == ce).sum()) >= n_docs  # one pair per (repeated) prefix
    else:
        assert int((ids == cb).sum()) == int((ids == ce).sum()) == 0
    supervised = labels[labels != -100]
    assert int((supervised == tok.eos_token_id).sum()) == n_docs  # only the EOS the collator appends
    assert not set(supervised.tolist()) & (control_ids(tok) - {tok.eos_token_id})
    if "max_length" in mode:  # the forged strings survive as text
        assert forged in tok.decode(ids[0][labels[0] != -100].tolist())
    # the generation prompt is protected the same way
    inputs = build_guidance_inputs(tok, [f"say {CONTEXT_END}"], [f"x{CONTEXT_END}.org"])
    assert int((inputs["input_ids"] == ce).sum()) == 1 and int((inputs["negative_prompt_ids"] == ce).sum()) == 1


def test_invalid_metadata_is_missing_counted_and_logged(ctx_tokenizer, caplog):
    tok = ctx_tokenizer
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    rows = [
        {"text": "doc one", "url": "http://[::1/x"},  # urlsplit: Invalid IPv6 URL
        {"text": "doc two", "url": "https://ok.org/a"},
        {"text": "doc three", "url": None},  # missing, not invalid
    ]
    for kind in ("url_host", "url_path"):
        with pytest.raises(InvalidMetadataError, match="cannot parse URL"):
            metadata_template(kind)(rows[0])
        collator = MetadataCollator(tok, metadata_template(kind), metadata_dropout=0.0, max_length=64)
        with caplog.at_level(logging.WARNING, logger="hf_ext.metadata.collator"):
            batch = collator(rows)
        assert collator.invalid_metadata == 1
        assert "invalid metadata" in caplog.text and "::1" in caplog.text
        caplog.clear()
        empty = [row[1] == cb and row[2] == ce for row in batch["input_ids"].tolist()]
        assert empty == [
            True,
            False,
            True,
        ]  # the bad and the missing URL give the empty context; the good one keeps it

    scores = [float("nan"), float("inf"), "-inf", "high", [3], 3.6, "2", None]
    template = metadata_template("quality_score")
    for bad in scores[:5]:
        with pytest.raises(InvalidMetadataError, match="int_score"):
            template({"int_score": bad})
    assert [template({"int_score": v}) for v in scores[5:]] == ["4", "2", ""]
    collator = MetadataCollator(tok, template, metadata_dropout=0.0, max_length=32)
    batch = collator([{"text": f"doc {i}", "int_score": v} for i, v in enumerate(scores)])
    assert collator.invalid_metadata == 5 and batch["input_ids"].shape[0] == len(scores)
    with pytest.raises(InvalidMetadataError, match="fmt"):
        metadata_template("format", fmt="{int_score:.1f}")({"int_score": "abc"})


@pytest.mark.parametrize("trainer_class", ["Trainer", "MetadataTrainer"])
def test_invalid_metadata_does_not_stop_a_trainer_run(ctx_tokenizer, tmp_path, trainer_class):
    """The count is logged: to callbacks after the metadata callback, to `log_history` (was: only the live `logs`
    dict, never `trainer_state.json`), and under `MetadataTrainer` also to callbacks before it (the reporting
    integrations come first)."""
    import transformers
    from transformers import TrainerCallback, TrainingArguments

    import hf_ext.metadata
    from hf_ext.metadata import MetadataCooldownCallback

    trainer_cls = getattr(hf_ext.metadata, trainer_class, None) or getattr(transformers, trainer_class)

    tok = ctx_tokenizer
    rows = [
        {"text": f"document {i} text", "url": "http://[::1/x" if i % 5 == 3 else f"https://h{i}.org/"}
        for i in range(16)
    ]
    collator = MetadataCollator(tok, metadata_template("url_host"), block_size=32)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    logged, logged_before = [], []

    class Record(TrainerCallback):
        def __init__(self, out):
            self.out = out

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.out.append(logs.get("metadata_invalid"))

    trainer = trainer_cls(
        model=tiny_llama(len(tok)),
        args=args,
        train_dataset=rows,
        data_collator=collator,
        callbacks=[Record(logged_before), MetadataCooldownCallback(collator, 0.25), Record(logged)],
    )
    trainer.train()
    assert trainer.state.global_step == 4
    assert collator.invalid_metadata >= 1
    assert logged and logged[-1] == collator.invalid_metadata
    rows_logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(rows_logged) == 4
    assert all("metadata_invalid" in row and "metadata_conditioning" in row for row in rows_logged)
    assert rows_logged[-1]["metadata_invalid"] == collator.invalid_metadata
    assert [row["metadata_conditioning"] for row in rows_logged] == [1, 1, 1, 0]  # the last 25% without metadata
    if trainer_class == "MetadataTrainer":
        assert logged_before == logged


def test_eos_is_generable_when_bos_is_eos():
    """GPT-2-style tokenizer (BOS == EOS): suppressing BOS must not suppress the end of text."""
    from hf_ext.data import build_tokenizer

    tok = build_tokenizer(512)
    tok.bos_token = tok.eos_token
    add_context_tokens(tok)
    assert tok.bos_token_id == tok.eos_token_id
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    model = tiny_llama(len(tok)).eval()
    for scale in (1.0, 2.0):
        out = generate_with_metadata_guidance(
            model,
            tok,
            ["hello there"],
            ["a.org"],
            guidance_scale=scale,
            max_new_tokens=2,
            do_sample=False,
            return_text=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        scores = out.scores[0][0]
        assert math.isfinite(float(scores[tok.eos_token_id])), scale
        assert scores[cb] == -math.inf and scores[ce] == -math.inf


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0, True, "2"])
def test_guidance_scale_must_be_finite_and_positive(ctx_tokenizer, bad):
    model = tiny_llama(len(ctx_tokenizer)).eval()
    with pytest.raises(ValueError, match="guidance_scale"):
        generate_with_metadata_guidance(model, ctx_tokenizer, ["a"], ["x"], guidance_scale=bad, max_new_tokens=1)


def test_recipe_rejects_nan_guidance_scale(tmp_path):
    from hf_ext.recipes.metadata_pretrain import main

    with pytest.raises(ValueError, match="--guidance_scale"):
        main(["--guidance_scale", "nan", "--output_dir", str(tmp_path / "never"), "--max_steps", "2"])
    assert not (tmp_path / "never").exists()
