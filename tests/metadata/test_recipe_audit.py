"""Audit regressions of the metadata_pretrain recipe and MetadataTrainer: checkpoint completeness, stale results,
flags the run would ignore."""

import os

import pytest
from transformers import TrainingArguments

import hf_ext.utils.io as io
from hf_ext.metadata import MetadataCollator, MetadataCooldownCallback, metadata_template
from hf_ext.recipes import metadata_pretrain
from hf_ext.utils.resume import last_complete_checkpoint

from .conftest import tiny_llama
from .test_recipe import TINY


def _dies_writing_the_second_state_file(monkeypatch):
    """atomic_write_json that is killed while writing the second metadata_conditioning.json."""
    write, calls = io.atomic_write_json, []

    def dying(path, obj, *args, **kwargs):
        if os.path.basename(path) == "metadata_conditioning.json":
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt("killed while writing metadata_conditioning.json")
        return write(path, obj, *args, **kwargs)

    monkeypatch.setattr(io, "atomic_write_json", dying)
    return calls


def test_recipe_save_killed_while_writing_the_metadata_state_leaves_a_checkpoint_that_resume_skips(
    tmp_path, monkeypatch
):
    """The cooldown state was written in on_save, after trainer_state.json (the file that marks a checkpoint
    complete): a save killed in between left a checkpoint that resume took as complete without its state."""
    calls = _dies_writing_the_second_state_file(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        metadata_pretrain.main([*TINY, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                                "--run_baseline", "false", "--doc_eval_steps", "4", "--max_eval_docs", "1",
                                "--output_dir", str(out)])  # fmt: skip
    run = out / "url_conditioned"
    assert [os.path.basename(os.path.dirname(c)) for c in calls] == ["checkpoint-2", "checkpoint-4"]
    assert (run / "checkpoint-2" / "metadata_conditioning.json").is_file()
    assert not (run / "checkpoint-4" / "trainer_state.json").exists()
    assert last_complete_checkpoint(str(run)) == str(run / "checkpoint-2")


def test_metadata_trainer_writes_the_state_before_the_checkpoint_is_complete(ctx_tokenizer, corpus, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    from hf_ext.metadata import MetadataTrainer

    calls = _dies_writing_the_second_state_file(monkeypatch)
    docs = corpus.select(range(16)).select_columns(["text", "url"])
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), max_length=32)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, save_strategy="steps",
                             save_steps=2, remove_unused_columns=False, report_to="none", use_cpu=True,
                             disable_tqdm=True)  # fmt: skip
    trainer = MetadataTrainer(model=tiny_llama(len(ctx_tokenizer), hidden=16), args=args, train_dataset=docs,
                              data_collator=collator, callbacks=[MetadataCooldownCallback(collator, 0.5)])  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert len(calls) == 2  # once per checkpoint (on_save does not write it a second time)
    assert not (tmp_path / "checkpoint-4" / "trainer_state.json").exists()
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    trainer.save_model(str(tmp_path / "final"))  # the final save is no checkpoint: no state file there
    assert not (tmp_path / "final" / "metadata_conditioning.json").exists()


class _PastValidation(RuntimeError):
    pass


def _stop_after_validation(monkeypatch):
    def stop(*args, **kwargs):
        raise _PastValidation("the run went past argument validation")

    monkeypatch.setattr(metadata_pretrain, "load_documents", stop)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--fp8_backend", "emulated"], "--fp8_backend is an FP8 option .* without FP8"),
        (["--fp8_monitor_steps", "5"], "--fp8_monitor_steps is an FP8 option"),
        (["--dataset", "hub"], "--dataset hub needs --dataset_name"),
        (["--dataset", "files"], "--dataset files needs --train_file"),
        (["--synthetic_docs", "50"], "--synthetic_docs only applies to --dataset synthetic"),
        (["--guidance_samples", "4"], "--guidance_samples .* only applies to --dataset synthetic"),
        (["--eval_fewshot", "5"], "--eval_fewshot only applies .* --eval_tasks"),
        (["--eval_url", "https://en.wikipedia.org/"], "--eval_url only applies .* --eval_tasks"),
        (["--dataset_config_name", "wikitext-2-raw-v1"], "--dataset_config_name=.* --dataset_name, which is not set"),
    ],
)
def test_flags_the_run_would_ignore_are_refused_before_writing(tmp_path, monkeypatch, extra, match):
    """Each was accepted and then ignored: the FP8 flags (the recipe never converts its models), --dataset hub/files
    without their source (trained on the embedded corpus), the synthetic-only and lm-eval-only flags."""
    _stop_after_validation(monkeypatch)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        metadata_pretrain.main([*TINY, "--max_steps", "4", "--output_dir", str(out), *extra])
    assert not out.exists()


def test_synthetic_data_refuses_data_source_flags(tmp_path, monkeypatch):
    _stop_after_validation(monkeypatch)
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "a b", "url": "https://a.org/"}\n')
    with pytest.raises(ValueError, match="--validation_file would be ignored: --dataset synthetic"):
        metadata_pretrain.main([*TINY, "--dataset", "synthetic", "--validation_file", str(valid),
                                "--output_dir", str(tmp_path / "never")])  # fmt: skip
    assert not (tmp_path / "never").exists()


def test_model_flags_ignored_by_a_loaded_model_are_refused(tmp_path, monkeypatch):
    _stop_after_validation(monkeypatch)
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        (model / name).write_text("{}")
    for extra, match in (
        (["--model_name_or_path", str(model), "--hidden_size", "32"], "--hidden_size sizes a fresh model"),
        (["--tokenizer_name", str(model), "--vocab_size", "512"], "--vocab_size sizes the tokenizer"),
    ):
        with pytest.raises(ValueError, match=match):
            metadata_pretrain.main([*extra, "--max_steps", "4", "--output_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_a_rerun_that_stops_early_leaves_no_older_results(tmp_path, monkeypatch):
    """The result files are written at the end; a rerun into the same folder that stopped during training left the
    older run's metadata_results.json and plot beside the new run's models."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("metadata_results.json", "task_eval.md", "document_loss.png"):
        (out / name).write_text("from an older run")
    (out / "notes.txt").write_text("not a result file")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during training")

    monkeypatch.setattr(metadata_pretrain, "_train_one", killed)
    with pytest.raises(KeyboardInterrupt):
        metadata_pretrain.main([*TINY, "--max_steps", "4", "--output_dir", str(out)])
    # the older results are gone; the fresh run recorded its arguments (what a resume of it must keep)
    assert sorted(os.listdir(out)) == ["metadata_run_data.json", "notes.txt"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--template", "format", "--template_format", "{url}", "--template_column", "url"], "--template_column is not"),
        (["--template_format", "{url}"], "--template_format only applies to --template format"),
    ],
)
def test_template_flags_the_template_does_not_read_are_refused(tmp_path, monkeypatch, extra, match):
    _stop_after_validation(monkeypatch)
    with pytest.raises(ValueError, match=match):
        metadata_pretrain.main([*TINY, "--output_dir", str(tmp_path / "never"), *extra])
    assert not (tmp_path / "never").exists()


def test_library_entry_points_name_bad_arguments(ctx_tokenizer):
    """Each of these failed late or with a message that did not name the argument (a float() or tokenizer error,
    generate()'s duplicate keyword), or was accepted and ignored (pad_to_multiple_of with packing, column with
    kind='format')."""
    import torch

    from hf_ext.metadata import generate_with_metadata_guidance

    url = metadata_template("url")
    with pytest.raises(ValueError, match="metadata_dropout must be a number"):
        MetadataCollator(ctx_tokenizer, url, metadata_dropout="x")
    with pytest.raises(ValueError, match="pad_to_multiple_of applies to padding mode only"):
        MetadataCollator(ctx_tokenizer, url, block_size=64, pad_to_multiple_of=8)
    with pytest.raises(ValueError, match="cooldown_fraction must be in"):
        MetadataCooldownCallback(MetadataCollator(ctx_tokenizer, url), "0.1")
    with pytest.raises(ValueError, match="kind='format' reads the columns its fmt fields name; drop column"):
        metadata_template("format", fmt="{url}", column="source")
    model = tiny_llama(len(ctx_tokenizer), hidden=16).eval()
    with pytest.raises(TypeError, match="metadata must be a str or a sequence of str/None"):
        generate_with_metadata_guidance(model, ctx_tokenizer, ["a"], [5], max_new_tokens=1)
    with pytest.raises(ValueError, match="negative_prompt_attention_mask is built from prompts and metadata"):
        generate_with_metadata_guidance(model, ctx_tokenizer, ["a"], ["x"], guidance_scale=2.0, max_new_tokens=1,
                                        negative_prompt_attention_mask=torch.ones(1, 1, dtype=torch.long))  # fmt: skip
