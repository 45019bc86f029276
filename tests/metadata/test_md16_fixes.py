"""Fixes of the md16 metadata audit.

1. A resume with another `cooldown_fraction`, `metadata_dropout` or `seed` than the checkpoint's
   `metadata_conditioning.json` records (or a `max_steps` that moves the cooldown's start across the steps already
   trained) was accepted silently: the remaining steps trained with another dropout pattern and switch step.
2. A dict (a dataset row) passed as guidance `metadata` was read as its keys: the model was conditioned on the
   literal column name (`"url"`); a set was accepted in arbitrary order.
3. An empty document with `add_eos=False` became a metadata prefix with no document (a padded batch of them gave the
   loss NaN; packing spent row space on an orphan context).
4. Blank metadata strings (`""`, `"   "`, `"\\n"`) were not missing: they trained as a shared non-empty context.
5. A list-of-str text was read by the tokenizer as one pre-split text, its items run together.
"""

import json
import logging
import math
import re
import shutil
import tempfile

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    MetadataCollator,
    MetadataCooldownCallback,
    MetadataTrainer,
    build_guidance_inputs,
    generate_with_metadata_guidance,
    metadata_template,
)

from .conftest import tiny_llama

# ---------------------------------------------------------------------------------------------------------------------
# 1. resume options


def _docs():
    return Dataset.from_list([{"text": f"document {i} " * 3, "url": f"http://h{i % 5}.com/x"} for i in range(48)])


def _trainer(tok, out, *, dropout=0.1, seed=42, fraction=0.5, max_steps=6, cls=MetadataTrainer):
    collator = MetadataCollator(tok, metadata_template("url_host"), metadata_dropout=dropout, seed=seed, max_length=32)
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-3,
        remove_unused_columns=False, report_to="none", logging_steps=1, save_strategy="steps", save_steps=2,
        use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    callback = MetadataCooldownCallback(collator, fraction)
    trainer = cls(
        model=tiny_llama(len(tok)), args=args, train_dataset=_docs(), data_collator=collator, callbacks=[callback]
    )
    return trainer, callback


def _conditioning(trainer, after: int) -> list[int]:
    return [h["metadata_conditioning"] for h in trainer.state.log_history if "loss" in h and h["step"] > after]


@pytest.fixture(scope="module")
def interrupted(ctx_tokenizer, tmp_path_factory):
    """A 6-step run (dropout 0.1, seed 42, cooldown 0.5: steps 1-3 with metadata), checkpoints 2, 4 and 6."""
    out = tmp_path_factory.mktemp("md16_resume") / "run"
    trainer, _ = _trainer(ctx_tokenizer, out)
    trainer.train()
    return out, _conditioning(trainer, 0)


def test_checkpoint_records_the_compared_options(interrupted):
    out, conditioning = interrupted
    record = json.loads((out / "checkpoint-2" / "metadata_conditioning.json").read_text())
    assert record["cooldown_fraction"] == 0.5 and record["switch_step"] == 3
    assert record["metadata_dropout"] == 0.1 and record["seed"] == 42
    assert conditioning == [1, 1, 1, 0, 0, 0]


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(fraction=0.2), ["cooldown_fraction=0.5 in the checkpoint, 0.2 now"]),
        (dict(dropout=0.3), ["metadata_dropout=0.1 in the checkpoint, 0.3 now"]),
        (dict(seed=7), ["seed=42 in the checkpoint, 7 now"]),
        (
            dict(fraction=0.0, dropout=0.9, seed=1),
            [
                "cooldown_fraction=0.5 in the checkpoint, 0.0 now",
                "metadata_dropout=0.1 in the checkpoint, 0.9 now",
                "seed=42 in the checkpoint, 1 now",
            ],
        ),
    ],
)
def test_resume_with_other_metadata_options_is_refused_by_name(ctx_tokenizer, interrupted, tmp_path, change, expected):
    out, _ = interrupted
    trainer, callback = _trainer(ctx_tokenizer, tmp_path / "new", **change)
    with pytest.raises(ValueError) as err:
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    message = str(err.value)
    for part in expected:
        assert part in message, message
    assert "checkpoint-2" in message and "Resume with the checkpoint's values" in message
    assert "start a new run" in message
    assert callback.collator.cooldown_start_batch is None and callback.collator.batches_seen == 0  # nothing changed
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())  # nothing written


def test_a_plain_trainer_resuming_from_its_last_checkpoint_is_refused_too(ctx_tokenizer, interrupted, tmp_path):
    out, _ = interrupted
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "checkpoint-6")
    trainer, _ = _trainer(ctx_tokenizer, copy, seed=43, cls=Trainer)
    with pytest.raises(ValueError, match=r"seed=42 in the checkpoint, 43 now"):
        trainer.train(resume_from_checkpoint=True)  # the Trainer picks checkpoint-4; args.resume_from_checkpoint unset


def test_resume_with_the_same_options_in_other_spellings_continues(ctx_tokenizer, interrupted, tmp_path, caplog):
    """numpy float32 dropout, an int seed of numpy's, an int cooldown spelled as float: the same run."""
    out, conditioning = interrupted
    trainer, _ = _trainer(ctx_tokenizer, tmp_path / "new", dropout=np.float32(0.1), seed=np.int64(42), fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="hf_ext.metadata.callbacks"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert not [r for r in caplog.records if "unchecked" in r.getMessage()]
    assert trainer.state.global_step == 6
    assert _conditioning(trainer, 2) == conditioning[2:]


def test_zero_dropout_resumes_whether_written_0_or_0_0(ctx_tokenizer, tmp_path):
    first, _ = _trainer(ctx_tokenizer, tmp_path / "a", dropout=0, fraction=0, max_steps=2)
    first.train()
    again, _ = _trainer(ctx_tokenizer, tmp_path / "b", dropout=0.0, fraction=0.0, max_steps=4)
    again.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))  # and a longer run: no cooldown to move
    assert again.state.global_step == 4


def test_a_longer_run_is_refused_only_where_the_switch_moves_across_trained_steps(ctx_tokenizer, interrupted, tmp_path):
    out, _ = interrupted
    # checkpoint-2 is before both switches (after step 3 at max_steps 6, after step 4 at 8): a resume as any other
    longer, callback = _trainer(ctx_tokenizer, tmp_path / "longer", max_steps=8)
    longer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert callback.switch_step == 4 and _conditioning(longer, 2) == [1, 1, 0, 0, 0, 0]
    # checkpoint-4 trained step 4 without metadata; at max_steps 10 the switch would come after step 5
    crossing, _ = _trainer(ctx_tokenizer, tmp_path / "crossing", max_steps=10)
    with pytest.raises(ValueError) as err:
        crossing.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    message = str(err.value)
    assert "max_steps=6 in the checkpoint, 10 now" in message
    assert "from after step 3 to after step 5" in message and "Resume with the checkpoint's values (max_steps=6" in message


def test_a_checkpoint_without_the_recorded_options_resumes_with_a_warning(ctx_tokenizer, interrupted, tmp_path, caplog):
    out, _ = interrupted
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(out / "checkpoint-2", checkpoint)
    record = json.loads((checkpoint / "metadata_conditioning.json").read_text())
    for name in ("cooldown_fraction", "metadata_dropout", "seed"):
        del record[name]
    (checkpoint / "metadata_conditioning.json").write_text(json.dumps(record))
    trainer, _ = _trainer(ctx_tokenizer, tmp_path / "new", seed=7)
    with caplog.at_level(logging.WARNING, logger="hf_ext.metadata.callbacks"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert any("cooldown_fraction / metadata_dropout / seed" in r.getMessage() for r in caplog.records)
    assert trainer.state.global_step == 6


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
def test_a_batch_of_only_empty_documents_keeps_them_with_no_label(ctx_tokenizer, block_size):
    """rv16b: refusing such a batch stopped a batch-size-1 run at its first empty document, which trained before
    (the Trainer weighs a micro-batch without label tokens 0)."""
    collator = MetadataCollator(
        ctx_tokenizer, metadata_template("url_host"), text_column="body", metadata_dropout=0.0, add_eos=False,
        block_size=block_size,
    )  # fmt: skip
    batch = collator([{"body": "", "url": "http://a.com/x"}, {"body": None, "url": "http://bb.org/y"}])
    assert (batch["labels"] == -100).all()
    assert collator.empty_documents == 2


def test_a_batch_size_one_run_trains_through_an_empty_document(ctx_tokenizer):
    from hf_ext.metadata import MetadataTrainer

    rows = [{"text": f"document {i} words " * 3, "url": f"http://h{i % 3}.com/x"} for i in range(8)]
    rows[3]["text"] = ""
    torch.manual_seed(0)
    model = tiny_llama(len(ctx_tokenizer)).float()
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), add_eos=False, max_length=32)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), max_steps=4, per_device_train_batch_size=1, gradient_accumulation_steps=2,
        remove_unused_columns=False, report_to="none", logging_steps=1, use_cpu=True, save_strategy="no",
        disable_tqdm=True, seed=0, data_seed=0,
    )  # fmt: skip
    trainer = MetadataTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert collator.empty_documents == 1


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
    assert fmt({"source": "wiki", "url": "  "}) == "wiki |"  # stripped, as guided generation reads it (md35)


# ---------------------------------------------------------------------------------------------------------------------
# 5. text type


@pytest.mark.parametrize("text", [["First paragraph.", "Second paragraph."], ("a", "b"), b"bytes", 3])
def test_text_that_is_not_a_str_is_refused_naming_text_column(ctx_tokenizer, text):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), text_column="body", metadata_dropout=0.0)
    with pytest.raises(TypeError, match="text_column='body' must hold a str \\(or None\\) per example, got a"):
        collator([{"body": text, "url": "http://a.com"}])
    with pytest.raises(TypeError, match="text_column='body'"):
        collator.metadata_for([{"body": text, "url": "http://a.com"}])


# ---------------------------------------------------------------------------------------------------------------------
# md22: the collator's data-defining settings are recorded and compared on resume (a no-metadata control resumed from
# a conditioned run's checkpoint trained on silently)


def _collator_trainer(tok, out, **collator_kwargs):
    kwargs = dict(metadata_dropout=0.1, seed=42, max_length=32) | collator_kwargs
    template = kwargs.pop("template", metadata_template("url_host"))
    collator = MetadataCollator(tok, template, **kwargs)
    args = TrainingArguments(
        output_dir=str(out), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-3,
        remove_unused_columns=False, report_to="none", logging_steps=1, save_strategy="steps", save_steps=2,
        use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    callback = MetadataCooldownCallback(collator, 0.5)
    return MetadataTrainer(
        model=tiny_llama(len(tok)), args=args, train_dataset=_docs(), data_collator=collator, callbacks=[callback]
    )


def test_checkpoint_records_the_collator_settings(interrupted):
    out, _ = interrupted
    record = json.loads((out / "checkpoint-2" / "metadata_conditioning.json").read_text())["collator"]
    assert record["conditioning"] is True and record["layout"] == "context" and record["max_length"] == 32
    assert record["template"]["kind"] == "url_host" and record["template"]["columns"] == ["url"]


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(conditioning=False), "MetadataCollator conditioning=True in the checkpoint, False now"),
        (dict(template=metadata_template("url")), "MetadataCollator template="),
        (dict(max_length=24), "MetadataCollator max_length=32 in the checkpoint, 24 now"),
        (dict(layout="meco"), "MetadataCollator layout='context' in the checkpoint, 'meco' now"),
    ],
)
def test_resume_with_other_collator_settings_is_refused(ctx_tokenizer, interrupted, tmp_path, change, expected):
    out, _ = interrupted
    trainer = _collator_trainer(ctx_tokenizer, tmp_path / "new", **change)
    with pytest.raises(ValueError, match="The MetadataCollator settings define what the remaining steps") as err:
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert expected in str(err.value), str(err.value)
    assert trainer.state.global_step == 2  # restored, not trained


def test_a_checkpoint_without_collator_settings_still_resumes(ctx_tokenizer, interrupted, tmp_path):
    out, conditioning = interrupted
    copy = tmp_path / "old"
    shutil.copytree(out / "checkpoint-2", copy)
    record = json.loads((copy / "metadata_conditioning.json").read_text())
    del record["collator"]  # as written before the settings were recorded
    (copy / "metadata_conditioning.json").write_text(json.dumps(record))
    trainer = _collator_trainer(ctx_tokenizer, tmp_path / "new")
    trainer.train(resume_from_checkpoint=str(copy))
    assert trainer.state.global_step == 6 and _conditioning(trainer, 2) == conditioning[2:]


# rv23 F5: every recorded collator setting, one at a time, at the level of the record and its comparison (the trainer
# cases above run four of them end to end). Each: the checkpoint's collator, and a change of that one setting. Written
# out, not read from COLLATOR_RECORD_FIELDS, so a setting dropped from (or added to) the record fails here.
_PADDING = dict(max_length=32)
_PACKING = dict(block_size=32)  # document_attention defaults to True
RECORDED_SETTINGS = {
    "conditioning": (_PADDING, dict(conditioning=False)),
    "layout": (_PADDING, dict(layout="meco")),
    "text_column": (_PADDING, dict(text_column="body")),
    "block_size": (_PACKING, dict(block_size=48)),
    "max_length": (_PADDING, dict(max_length=24)),
    "max_document_tokens": (_PADDING, dict(max_document_tokens=16)),
    "repeat_context": (_PACKING, dict(repeat_context=False)),
    "add_eos": (_PADDING, dict(add_eos=False)),
    "max_metadata_tokens": (_PADDING, dict(max_metadata_tokens=8)),
    "document_attention": (_PACKING, dict(document_attention=False)),
    "template": (_PADDING, dict(template=metadata_template("url"))),
}


def _saved_record(tok, folder, **collator_kwargs):
    """The checkpoint state file `MetadataCooldownCallback.save_state` writes for a collator of these settings."""
    from types import SimpleNamespace

    from hf_ext.metadata.callbacks import STATE_FILE

    collator = MetadataCollator(tok, metadata_template("url_host"), metadata_dropout=0.1, seed=42, **collator_kwargs)
    callback = MetadataCooldownCallback(collator, 0.5)
    callback.switch_step = 3
    callback.save_state(str(folder), SimpleNamespace(global_step=2))
    path = folder / STATE_FILE
    return str(path), json.loads(path.read_text())


def _check_resume(tok, saved, **collator_kwargs):
    from types import SimpleNamespace

    kwargs = dict(metadata_dropout=0.1, seed=42) | collator_kwargs
    collator = MetadataCollator(tok, kwargs.pop("template", metadata_template("url_host")), **kwargs)
    callback = MetadataCooldownCallback(collator, 0.5)
    callback.switch_step = 3
    callback._check_resumed_options(saved, SimpleNamespace(global_step=2, max_steps=6))


def test_the_checkpoint_records_exactly_these_collator_settings(ctx_tokenizer, tmp_path):
    for base, _ in RECORDED_SETTINGS.values():
        _, record = _saved_record(ctx_tokenizer, tmp_path, **base)
        assert set(record["collator"]) == set(RECORDED_SETTINGS)


@pytest.mark.parametrize("name", sorted(RECORDED_SETTINGS))
def test_a_resume_that_changes_one_recorded_collator_setting_is_refused_naming_it(ctx_tokenizer, tmp_path, name):
    from hf_ext.metadata.callbacks import collator_record

    base, change = RECORDED_SETTINGS[name]
    saved = _saved_record(ctx_tokenizer, tmp_path, **base)
    _check_resume(ctx_tokenizer, saved, **base)  # the same settings resume
    # the change moves this one setting of the record, no other
    kwargs = dict(metadata_dropout=0.1, seed=42) | base | change
    changed = MetadataCollator(ctx_tokenizer, kwargs.pop("template", metadata_template("url_host")), **kwargs)
    now = collator_record(changed)
    assert [key for key in now if now[key] != saved[1]["collator"].get(key)] == [name]
    with pytest.raises(ValueError, match="The MetadataCollator settings define what the remaining steps") as err:
        _check_resume(ctx_tokenizer, saved, **base | change)
    message = str(err.value)
    assert f"MetadataCollator {name}={saved[1]['collator'][name]!r} in the checkpoint, {now[name]!r} now" in message
    assert re.findall(r"MetadataCollator (\w+)=", message) == [name], message  # only this setting is named
    assert f"Resume with the checkpoint's values (MetadataCollator.{name}=" in message
