"""Mutation kills mu53 (shared infrastructure: hf_ext/utils, recipes/_common.py, the evaluation helpers).

Each test pins a behaviour a hand-made mutant changed without any existing test failing."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest


def test_atomic_open_removes_its_temporary_file_when_the_block_fails(tmp_path):
    """mu53 I03: a write that fails inside the block leaves the old file as it was and no `.<name>.*.tmp` beside it
    (the cleanup in `atomic_open`'s except branch)."""
    from hf_ext.utils.io import atomic_open

    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half-written"):
        with atomic_open(str(path)) as fh:
            fh.write("new, half")
            raise RuntimeError("half-written")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_changed_train_batch_is_logged_by_global_rank_zero_not_each_nodes_local_rank_zero(tmp_path, caplog):
    """mu53 R15: on 2 nodes, the first process of the second node (global rank 1, local rank 0) says nothing; only
    global rank 0 logs the warning (every process gets the message back)."""
    from hf_ext.utils.resume import SCHEDULE_RECORD_NAME, TRAIN_BATCH_KEY, warn_changed_train_batch

    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3, "max_steps": 6}))
    batch = {"total_train_batch_size": 4, "per_device_train_batch_size": 4, "n_gpu": 0,
             "gradient_accumulation_steps": 1, "processes": 1}  # fmt: skip
    (checkpoint / SCHEDULE_RECORD_NAME).write_text(json.dumps({"format": 1, "args": {}, TRAIN_BATCH_KEY: batch}))

    def process(global_rank, local_rank):
        args = SimpleNamespace(
            train_batch_size=4, gradient_accumulation_steps=1, world_size=2, n_gpu=0, max_steps=6,
            ignore_data_skip=False, process_index=global_rank, local_process_index=local_rank,
        )  # fmt: skip
        return SimpleNamespace(args=args)

    with caplog.at_level(logging.WARNING, logger="hf_ext.utils.resume"):
        message = warn_changed_train_batch(process(1, 0), str(checkpoint))
    assert message is not None and "this run's is 8" in message
    assert not [r for r in caplog.records if r.name == "hf_ext.utils.resume"]
    with caplog.at_level(logging.WARNING, logger="hf_ext.utils.resume"):
        assert warn_changed_train_batch(process(0, 0), str(checkpoint)) == message
    assert [r.getMessage() for r in caplog.records if r.name == "hf_ext.utils.resume"] == [message]


def test_atomic_write_of_a_name_just_under_the_shortening_bound(tmp_path):
    """mu53 I04: names of more than 200 bytes get a shortened temporary name; a 245-byte name written whole as
    `.<name>.<random>.tmp` (259 bytes) would fail with ENAMETOOLONG."""
    from hf_ext.utils.io import atomic_write_text

    name = "x" * 241 + ".txt"  # 245 bytes
    atomic_write_text(str(tmp_path / name), "content")
    assert (tmp_path / name).read_text() == "content"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def _checkpoint(root, step, state="{}", files=("model.safetensors", "optimizer.pt")):
    folder = root / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(state)
    for name in files:
        (folder / name).write_bytes(b"x")
    return folder


def test_a_checkpoint_with_an_unreadable_trainer_state_is_skipped_and_refused(tmp_path, caplog):
    """mu53 R03: `trainer_state.json` cut off by a killed save (not JSON) makes the folder unusable: `last` takes
    the previous checkpoint (with a warning), and naming it is refused."""
    from hf_ext.utils.resume import checkpoint_problem, resolve_resume_checkpoint

    earlier = _checkpoint(tmp_path, 2, json.dumps({"global_step": 2}))
    damaged = _checkpoint(tmp_path, 4, '{"global_step": 4, "log_hi')
    assert "cannot be read" in checkpoint_problem(str(damaged))
    with caplog.at_level(logging.WARNING, logger="hf_ext.utils.resume"):
        assert resolve_resume_checkpoint("last", str(tmp_path)) == str(earlier)
    assert any("Skipping" in r.getMessage() and "checkpoint-4" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="cannot be read"):
        resolve_resume_checkpoint(str(damaged), str(tmp_path))


def test_a_weights_only_peft_adapter_checkpoint_is_refused(tmp_path):
    """mu53 R04: a PEFT run saved with save_only_model=True holds `adapter_model.safetensors` and no optimizer /
    scheduler / RNG state: a resume from it is refused like a full model's."""
    from hf_ext.utils.resume import resolve_resume_checkpoint, saved_only_model

    adapter = _checkpoint(tmp_path, 3, json.dumps({"global_step": 3}), files=("adapter_model.safetensors",))
    assert saved_only_model(str(adapter))
    with pytest.raises(ValueError, match="save_only_model=True"):
        resolve_resume_checkpoint(str(adapter), str(tmp_path))
    full = _checkpoint(
        tmp_path, 6, json.dumps({"global_step": 6}), files=("adapter_model.safetensors", "optimizer.pt")
    )
    assert not saved_only_model(str(full))


def test_checkpoint_being_saved_is_the_folder_of_the_current_step(tmp_path):
    """mu53 R09: a Trainer's internal save into `checkpoint-<global_step>` is a checkpoint save (its state files land
    before trainer_state.json); the final save and other processes' are not."""
    from hf_ext.utils.resume import checkpoint_being_saved

    def trainer(step, should_save=True):
        args = SimpleNamespace(output_dir=str(tmp_path), should_save=should_save)
        return SimpleNamespace(args=args, state=SimpleNamespace(global_step=step))

    folder = str(tmp_path / "checkpoint-5")
    assert checkpoint_being_saved(trainer(5), folder, True) == folder
    assert checkpoint_being_saved(trainer(5), folder + "/", True) == folder + "/"
    assert checkpoint_being_saved(trainer(4), folder, True) is None
    assert checkpoint_being_saved(trainer(5), folder, False) is None
    assert checkpoint_being_saved(trainer(5, should_save=False), folder, True) is None
    assert checkpoint_being_saved(trainer(5), None, True) is None  # the final save into output_dir


def test_decay_names_of_a_peft_wrapped_model_carry_the_wrappers_prefix():
    """mu53 D01: the model's own `decay_parameter_names()` is reached through peft's wrapper and names the inner
    model's parameters; the Trainer gets them under the wrapper's names (`base_model.model.<name>`), all of them."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    from hf_ext.utils.decay import ModelDecayNamesMixin

    from .fog_decay_helpers import tiny_fog

    model = tiny_fog()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    inner_names = set(model.decay_parameter_names())  # after the LoRA layers were added
    assert inner_names

    class Decayed(ModelDecayNamesMixin, Trainer):
        pass

    names = Decayed.get_decay_parameter_names(SimpleNamespace(), peft_model)
    assert set(names) == {f"base_model.model.{n}" for n in inner_names}


def test_old_grouping_regroups_a_model_with_frozen_parameters(tmp_path):
    """mu53 D04: a checkpoint grouped by transformers' name patterns is restored into groups of the trainable
    parameters only (frozen ones are in no group): a model with a frozen parameter is regrouped, not refused."""
    from transformers import Trainer, default_data_collator

    from hf_ext.federated import PrivateTrainer, PrivateTrainingArguments

    from .fog_decay_helpers import tiny_fog, token_dataset

    model = tiny_fog()
    frozen = model.get_input_embeddings().weight
    frozen.requires_grad_(False)
    args = PrivateTrainingArguments(str(tmp_path), weight_decay=0.1, use_cpu=True, report_to=[], max_steps=1)
    trainer = PrivateTrainer(
        model=model, args=args, train_dataset=token_dataset(), data_collator=default_data_collator
    )
    trainer.create_optimizer()
    restore = trainer._regroup_by_name_patterns()
    assert restore is not None
    patterns = set(Trainer.get_decay_parameter_names(trainer, model))
    groups = trainer.optimizer.param_groups
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for n, p in trainable if n in patterns]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for n, p in trainable if n not in patterns]
    assert not any(p is frozen for g in groups for p in g["params"])


def test_split_batches_is_recorded_with_the_checkpoints_train_batch(tmp_path):
    """mu53 R10: a run whose accelerate config splits each batch over the processes records `split_batches: True`
    with its total, and reads it back (the resume's warning describes that checkpoint's factors from it)."""
    from hf_ext.utils.resume import read_train_batch_record, write_schedule_record

    batch = {"total_train_batch_size": 4, "per_device_train_batch_size": 4, "n_gpu": 0,
             "gradient_accumulation_steps": 1, "processes": 2}  # fmt: skip
    args = SimpleNamespace(learning_rate=0.1, max_steps=6)
    write_schedule_record(str(tmp_path), args, 6, {**batch, "split_batches": True})
    assert read_train_batch_record(str(tmp_path)) == {**batch, "split_batches": True}
    write_schedule_record(str(tmp_path), args, 6, batch)
    assert read_train_batch_record(str(tmp_path)) == batch


def test_python_scalar_takes_only_zero_dimensional_tensors():
    """mu53 C02: a 0-d tensor becomes its Python number; a one-element tensor with a dimension stays as it is, for the
    caller's check to refuse by name (it is not a scalar setting)."""
    import torch

    from hf_ext.utils.checks import python_scalar

    assert python_scalar(torch.tensor(0.25)) == 0.25 and isinstance(python_scalar(torch.tensor(0.25)), float)
    one = torch.tensor([0.25])
    assert python_scalar(one) is one


def test_same_batch_hint_divides_by_the_processes_too(tmp_path):
    """mu53 R13: a checkpoint trained 8 samples per step; this run trains 2 per device on 2 processes (4): the hint
    keeps its processes and doubles the accumulation (2 x 2 x 2 = 8), not 8 / 2 = 4 steps of accumulation (16)."""
    from hf_ext.utils.resume import SCHEDULE_RECORD_NAME, TRAIN_BATCH_KEY, warn_changed_train_batch

    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3, "max_steps": 6}))
    batch = {"total_train_batch_size": 8, "per_device_train_batch_size": 8, "n_gpu": 0,
             "gradient_accumulation_steps": 1, "processes": 1}  # fmt: skip
    (checkpoint / SCHEDULE_RECORD_NAME).write_text(json.dumps({"format": 1, "args": {}, TRAIN_BATCH_KEY: batch}))
    args = SimpleNamespace(
        train_batch_size=2, gradient_accumulation_steps=1, world_size=2, n_gpu=0, max_steps=6,
        ignore_data_skip=False, process_index=1,
    )  # fmt: skip
    message = warn_changed_train_batch(SimpleNamespace(args=args), str(checkpoint))
    assert "this run's is 4" in message
    assert "e.g. --gradient_accumulation_steps 2 on these processes" in message


@pytest.mark.parametrize("value", ["True", " true ", "TRUE"])
def test_reentrant_checkpointing_reads_a_true_string_in_any_case(value):
    """mu53 C04: `--gradient_checkpointing_kwargs '{"use_reentrant": "True"}'` asks for reentrant checkpoints as
    the JSON `true` does."""
    from hf_ext.utils.checks import reentrant_checkpointing

    assert reentrant_checkpointing({"use_reentrant": value}, None) is not None
    assert reentrant_checkpointing({"use_reentrant": "false"}, None) is None


def test_a_save_over_an_earlier_runs_weight_file_counts_as_written(tmp_path):
    """mu53 K06: a rerun into the same folder replaces `model.safetensors` under the same name; that is a model this
    run wrote (its identity changed), while the earlier run's file left as it was is not."""
    import os

    from hf_ext.recipes._common import model_not_written, weight_files

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"earlier run")
    before = weight_files(str(tmp_path))
    assert "earlier run's, unchanged" in model_not_written(str(tmp_path), before)
    (tmp_path / "new.tmp").write_bytes(b"this run's weights")
    os.replace(tmp_path / "new.tmp", tmp_path / "model.safetensors")
    assert model_not_written(str(tmp_path), before) is None


def test_retention_refuses_a_lower_is_better_task_that_is_not_compared():
    """mu53 E03: a `lower_is_better` name that matches no compared task (a typo, another task's name) is refused; the
    task it meant would silently be scored the other way round (higher is better)."""
    from hf_ext.evaluation.scores import accuracy_retention

    scores = {"wikitext": 20.0, "arc_easy": 0.5}
    paired = {"wikitext": 25.0, "arc_easy": 0.4}
    assert accuracy_retention(scores, paired, lower_is_better=["wikitext"])["per_task"]["wikitext"] == 80.0
    with pytest.raises(ValueError, match=r"lower_is_better names tasks that are not compared: \['wiki_text'\]"):
        accuracy_retention(scores, paired, lower_is_better=["wiki_text"])


@pytest.fixture
def reproduce_calls(monkeypatch):
    """`hf_ext.reproduce.reproduce` replaced by a stand-in that records the seeds it is given."""
    import hf_ext.reproduce as reproduce_module

    seen = []

    class Report:
        exit_code = 0

        def to_markdown(self):
            return "report"

    def fake(method, seeds=None, fast=False, output_dir=None, jobs=1, progress=None):
        seen.append(seeds)
        return Report()

    monkeypatch.setattr(reproduce_module, "reproduce", fake)
    return seen


def test_first_seed_takes_the_last_start_whose_seeds_fit_below_2_to_the_32(reproduce_calls):
    """mu53 L01: `--first_seed 2**32 - N` runs seeds 2**32 - N .. 2**32 - 1, the last N seeds there are (the bound
    is inclusive; one more is refused by test_reproduce_first_seed)."""
    from hf_ext.cli import main

    assert main(["reproduce", "compliance", "--seeds", "3", "--first_seed", str(2**32 - 3)]) == 0
    assert reproduce_calls == [[2**32 - 3, 2**32 - 2, 2**32 - 1]]


def test_seeds_takes_max_seeds_itself(reproduce_calls):
    """mu53 L02: `--seeds MAX_SEEDS` is the largest count accepted (the bound is inclusive), MAX_SEEDS + 1 refused."""
    from hf_ext.cli import main
    from hf_ext.reproduce import MAX_SEEDS

    assert main(["reproduce", "compliance", "--seeds", str(MAX_SEEDS)]) == 0
    assert reproduce_calls == [MAX_SEEDS]
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "compliance", "--seeds", str(MAX_SEEDS + 1)])
    assert exc.value.code == 2 and reproduce_calls == [MAX_SEEDS]


def test_a_jobs_value_without_a_method_is_a_usage_error_whatever_its_value(reproduce_calls, capsys):
    """mu53 L03: any `--jobs` other than the default 1 (0 too) given without a method is a usage error naming it,
    not the list of methods with exit 0 (a forgotten method name must not read as a successful run)."""
    from hf_ext.cli import main

    for jobs in ("0", "2"):
        with pytest.raises(SystemExit) as exc:
            main(["reproduce", "--jobs", jobs])
        assert exc.value.code == 2 and "--jobs given without a method" in capsys.readouterr().err
    assert reproduce_calls == []


def test_run_with_a_flag_before_the_recipe_name_says_the_name_comes_first(capsys):
    """mu53 L04: `hf-ext run --output_dir out pretrain` is a usage error saying the recipe name comes first (not
    "Unknown recipe '--output_dir'")."""
    from hf_ext.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--output_dir", "out", "pretrain"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "`hf-ext run` needs a recipe name first" in err and "Unknown recipe" not in err
