"""Data cannot forge control tokens, bad metadata values never stop a run, EOS stays generable, guidance is checked."""

import json
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

    # a NaN float is pandas' missing cell: no metadata like None (not invalid); the string "nan" is not a number
    scores = ["nan", float("inf"), "-inf", "high", [3], 3.6, "2", None, float("nan")]
    template = metadata_template("quality_score")
    for bad in scores[:5]:
        with pytest.raises(InvalidMetadataError, match="int_score"):
            template({"int_score": bad})
    assert [template({"int_score": v}) for v in scores[5:]] == ["4", "2", "", ""]
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


@pytest.mark.parametrize(
    "dataset_kind,trainer_class",
    [("map_style", "MetadataTrainer"), ("iterable", "MetadataTrainer"), ("map_style", "Trainer")],
)
def test_logged_invalid_count_is_exact_across_eval_epochs_and_resume(
    ctx_tokenizer, tmp_path, dataset_kind, trainer_class
):
    """`metadata_invalid` at step N is the number of training examples with an invalid metadata value in the
    micro-batches of steps 1..N. It counted every collation instead: evaluation batches (9/18/20 where 5/10/12 were
    due), the batch prepared ahead for the next step, and it restarted from 0 on resume (2,2,4,4 instead of
    10,10,12,12); now the value is stored in metadata_conditioning.json and read back from the checkpoint resumed
    from."""
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hf_ext.metadata import MetadataCooldownCallback, MetadataTrainer

    tok = ctx_tokenizer
    cb_id, ce_id = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    bad = {1, 6, 9, 14}
    rows = [
        {"text": f"document {i} " + "word " * (i % 5), "url": "http://[::1/x" if i in bad else f"https://h{i}.org/"}
        for i in range(16)
    ]
    data = Dataset.from_list(rows)
    train_data = data.to_iterable_dataset() if dataset_kind == "iterable" else data
    base = MetadataTrainer if trainer_class == "MetadataTrainer" else Trainer

    class Counting(base):
        """Reference: invalid examples trained per step (dropout 0: only they get the empty context)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.per_step: dict[int, int] = {}

        def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
            ids = inputs["input_ids"]
            empty = sum(int(ids[r, c + 1]) == ce_id for r, c in (ids == cb_id).nonzero().tolist())
            step = self.state.global_step + 1
            self.per_step[step] = self.per_step.get(step, 0) + empty
            return super().training_step(model, inputs, num_items_in_batch)

    class Rows(TrainerCallback):  # what the callbacks after MetadataCooldownCallback receive
        def __init__(self):
            self.rows = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.rows.append((state.global_step, dict(logs)))

    def run(out, cooldown, eval_data=None, resume=None):
        collator = MetadataCollator(tok, metadata_template("url_host"), metadata_dropout=0.0, max_length=32)
        args = TrainingArguments(
            output_dir=str(out),
            max_steps=12,  # 16 documents in batches of 2, 2 accumulation steps: 4 steps an epoch, 3 epochs
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            per_device_eval_batch_size=4,
            learning_rate=1e-3,
            remove_unused_columns=False,
            report_to="none",
            logging_steps=1,
            save_strategy="steps",
            save_steps=6,
            eval_strategy="steps" if eval_data is not None else "no",
            eval_steps=3,
            use_cpu=True,
            seed=0,
            data_seed=0,
            disable_tqdm=True,
        )
        rows_cb = Rows()
        trainer = Counting(
            model=tiny_llama(len(tok)),
            args=args,
            train_dataset=train_data,
            eval_dataset=eval_data,
            data_collator=collator,
            callbacks=[MetadataCooldownCallback(collator, cooldown), rows_cb],
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer, rows_cb.rows

    # the reference run trains without a cooldown, so every invalid example is visible in its batch
    reference, _ = run(tmp_path / "ref", cooldown=0.0)
    assert sorted(reference.per_step) == list(range(1, 13))
    expected, total = {}, 0
    for step in range(1, 13):
        total += reference.per_step[step]
        expected[step] = total
    assert [expected[s] for s in (4, 8, 12)] == [4, 8, 12]  # each epoch trains the 4 invalid documents once

    def logged(trainer, rows, key="loss", after=0):
        history = {
            r["step"]: r["metadata_invalid"] for r in trainer.state.log_history if key in r and r["step"] > after
        }
        from_callbacks = {step: logs["metadata_invalid"] for step, logs in rows if key in logs}
        assert history == from_callbacks
        return history

    full, full_rows = run(tmp_path / "full", cooldown=0.25, eval_data=data)
    assert logged(full, full_rows) == expected
    assert logged(full, full_rows, "eval_loss") == {s: expected[s] for s in (3, 6, 9, 12)}  # eval batches not counted
    assert full_rows[-1][1]["metadata_invalid"] == 12  # the final train() summary row
    saved = json.loads((tmp_path / "full" / "checkpoint-6" / "metadata_conditioning.json").read_text())
    assert saved["metadata_invalid"] == expected[6]

    resumed, resumed_rows = run(
        tmp_path / "full", cooldown=0.25, eval_data=data, resume=str(tmp_path / "full" / "checkpoint-6")
    )
    assert logged(resumed, resumed_rows, after=6) == {s: v for s, v in expected.items() if s > 6}
    assert logged(resumed, resumed_rows, "eval_loss", after=6) == {s: expected[s] for s in (9, 12)}


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


def test_a_numpy_guidance_scale_is_a_number(ctx_tokenizer):
    """`np.float32(1.5)` (e.g. from a sweep's `np.linspace`) used to be refused as if its value were invalid."""
    import numpy as np
    import torch

    model = tiny_llama(len(ctx_tokenizer)).eval()
    kw = dict(max_new_tokens=2, do_sample=False, return_text=False)
    a = generate_with_metadata_guidance(model, ctx_tokenizer, ["a"], ["x"], guidance_scale=np.float32(1.5), **kw)
    b = generate_with_metadata_guidance(model, ctx_tokenizer, ["a"], ["x"], guidance_scale=1.5, **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["conditioning", "add_eos", "repeat_context", "document_attention", "return_position_ids"])
@pytest.mark.parametrize("bad", ["false", 0, 1.0])
def test_collator_on_off_options_refuse_non_bools_by_name(ctx_tokenizer, name, bad):
    """`conditioning="false"` was truthy: the collator silently conditioned every document (and so on for each
    on/off option); each is refused by name."""
    template = metadata_template("url")
    with pytest.raises(TypeError, match=name):
        MetadataCollator(ctx_tokenizer, template, block_size=32, **{name: bad})


def test_collator_on_off_options_take_numpy_bools(ctx_tokenizer):
    import numpy as np

    collator = MetadataCollator(ctx_tokenizer, metadata_template("url"), block_size=32, conditioning=np.bool_(False))
    batch = collator([{"text": "hello world", "url": "https://a.example.org/x"}])
    assert not collator.conditioning_active and batch["input_ids"].shape == (1, 32)


@pytest.mark.parametrize("name", ["return_text", "suppress_context_tokens"])
def test_guidance_on_off_options_refuse_non_bools_by_name(ctx_tokenizer, name):
    """`return_text="false"` was truthy and returned text; refused by name before generating."""
    model = tiny_llama(len(ctx_tokenizer)).eval()
    with pytest.raises(TypeError, match=name):
        generate_with_metadata_guidance(model, ctx_tokenizer, ["a"], ["x"], max_new_tokens=1, **{name: "false"})
