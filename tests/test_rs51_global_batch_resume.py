"""A resume at another total train batch says so (audit rs51).

transformers' `Trainer` resumes by skipping the first `global_step % steps per epoch x gradient_accumulation_steps`
batches of the new dataloader, a count of batches: at another total train batch (per-device batch x GPUs x gradient
accumulation x processes) the resumed run trains again samples the checkpoint's run had trained, or never trains some
it had not reached, and its epoch / step accounting changes. It went on without a word where the per-device batch was
kept (another accumulation or number of processes; transformers itself compares the per-device batch only). hf_ext's
Trainers now record the total and its factors in every checkpoint (`lr_schedule.json`, entry `train_batch`) and warn on
a resume at another total, once, on global rank 0; at the same total on another split the resume is exact and silent.
"""

from __future__ import annotations

import json
import logging
import shutil
from types import SimpleNamespace

import pytest
import torch

from hf_ext.utils.resume import SCHEDULE_RECORD_NAME, train_or_restore_finished, with_loss_window

from .test_logging_window_resume import TinyLM, _tiny_data

LOGGER = "hf_ext.utils.resume"
TRAIN_BATCH_KEY = "train_batch"  # the entry of lr_schedule.json (hf_ext.utils.resume.TRAIN_BATCH_KEY)


def _trainer(out, per_device=4, accumulation=1, max_steps=6, **extra):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=str(out), use_cpu=True, report_to="none", disable_tqdm=True, seed=0, data_seed=0,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation, max_steps=max_steps,
        logging_steps=1, save_strategy="steps", save_steps=3, learning_rate=0.05, **extra,
    )  # fmt: skip
    return with_loss_window(Trainer)(model=TinyLM(), args=args, train_dataset=_tiny_data(64))


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 6-step run at per-device batch 4 (one process): its losses and its checkpoint-3."""
    out = tmp_path_factory.mktemp("full")
    trainer = _trainer(out)
    trainer.train()
    return _losses(trainer), out / "checkpoint-3"


def _resume(full_run, tmp_path, caplog, per_device, accumulation=1, **extra):
    """Resume a copy of the full run's checkpoint-3 at these flags: (trainer, hf_ext's warnings)."""
    checkpoint = tmp_path / "checkpoint-3"
    shutil.copytree(full_run[1], checkpoint)
    trainer = _trainer(tmp_path, per_device, accumulation, **extra)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and "total train batch" in r.getMessage()]
    return trainer, warnings


def test_every_checkpoint_records_the_total_train_batch(full_run):
    from hf_ext.utils.resume import TRAIN_BATCH_KEY as key
    from hf_ext.utils.resume import read_train_batch_record

    assert key == TRAIN_BATCH_KEY
    record = json.loads((full_run[1] / SCHEDULE_RECORD_NAME).read_text())
    assert record["format"] == 1 and "args" in record  # the schedule record as before, one entry more
    assert record[TRAIN_BATCH_KEY] == {
        "total_train_batch_size": 4, "per_device_train_batch_size": 4, "n_gpu": 0, "gradient_accumulation_steps": 1,
        "processes": 1,
    }  # fmt: skip
    assert read_train_batch_record(str(full_run[1]))["total_train_batch_size"] == 4
    del record[TRAIN_BATCH_KEY]  # as in a checkpoint written before it was recorded
    (full_run[1].parent / "old").mkdir()
    (full_run[1].parent / "old" / SCHEDULE_RECORD_NAME).write_text(json.dumps(record))
    assert read_train_batch_record(str(full_run[1].parent / "old")) is None


def test_a_smaller_per_device_batch_warns(full_run, tmp_path, caplog):
    """Per-device 4 -> 2 (total 4 -> 2): the resumed steps 4-6 are not the uninterrupted run's (the skip counts 3
    steps of 2 samples, 6 samples trained again); warned, naming both totals, their factors and the fix, and the run
    goes on."""
    trainer, warnings = _resume(full_run, tmp_path, caplog, per_device=2)
    assert trainer.state.global_step == 6
    assert max(abs(a - b) for a, b in zip(_losses(trainer)[3:], full_run[0][3:], strict=True)) > 1e-2
    assert len(warnings) == 1
    message = warnings[0]
    assert "total train batch of 4 samples per optimizer step" in message and "this run's is 2" in message
    assert "--per_device_train_batch_size 4 x --gradient_accumulation_steps 1 x 1 process" in message
    assert "--per_device_train_batch_size 2 x --gradient_accumulation_steps 1 x 1 process" in message
    assert "trains again 6 samples the checkpoint's run had trained" in message
    assert "the 3 steps left to --max_steps 6 train 6 samples, not 12" in message
    assert "e.g. --gradient_accumulation_steps 2 on these processes" in message


def test_more_accumulation_at_the_same_per_device_batch_warns(full_run, tmp_path, caplog):
    """Accumulation 1 -> 2 at the same per-device batch (total 4 -> 8): transformers compares the per-device batch
    only, so nothing at all was said; now warned."""
    trainer, warnings = _resume(full_run, tmp_path, caplog, per_device=4, accumulation=2)
    assert trainer.state.global_step == 6 and len(warnings) == 1
    assert "this run's is 8" in warnings[0] and "never trains 12 samples" in warnings[0]
    assert "e.g. --gradient_accumulation_steps 1 on these processes" in warnings[0]


def test_the_same_total_on_another_split_is_silent_and_exact(full_run, tmp_path, caplog):
    """Per-device 2 x accumulation 2 = the checkpoint's 4: the resume continues the run (losses within 1e-6 of the
    uninterrupted run's), and hf_ext says nothing."""
    trainer, warnings = _resume(full_run, tmp_path, caplog, per_device=2, accumulation=2)
    assert warnings == []
    assert _losses(trainer) == pytest.approx(full_run[0], abs=1e-6)


def test_a_checkpoint_without_the_entry_resumes_silently(full_run, tmp_path, caplog):
    """A checkpoint written before the total was recorded resumes as before (nothing compared)."""
    checkpoint = tmp_path / "old"
    shutil.copytree(full_run[1], checkpoint)
    path = checkpoint / SCHEDULE_RECORD_NAME
    record = json.loads(path.read_text())
    record.pop(TRAIN_BATCH_KEY, None)
    path.write_text(json.dumps(record))
    trainer = _trainer(tmp_path, per_device=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 6
    assert not [r for r in caplog.records if r.name == LOGGER and "total train batch" in r.getMessage()]


def test_ignore_data_skip_says_no_batch_is_skipped(full_run, tmp_path, caplog):
    trainer, warnings = _resume(full_run, tmp_path, caplog, per_device=2, ignore_data_skip=True)
    assert len(warnings) == 1
    assert "With ignore_data_skip=True no batches are skipped" in warnings[0]
    assert "trains again" not in warnings[0] and "the 3 steps left to --max_steps 6" in warnings[0]


@pytest.mark.parametrize(
    "entry, problem",
    [
        ([], "'train_batch' is \\[\\], not an object"),
        ({"total_train_batch_size": "4"}, "train_batch\\['total_train_batch_size'\\] is '4', not an integer >= 1"),
    ],
)
def test_a_malformed_entry_is_refused_by_name_before_any_step(full_run, tmp_path, entry, problem):
    checkpoint = tmp_path / "checkpoint-3"
    shutil.copytree(full_run[1], checkpoint)
    path = checkpoint / SCHEDULE_RECORD_NAME
    record = json.loads(path.read_text())
    record[TRAIN_BATCH_KEY] = entry
    path.write_text(json.dumps(record))
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match=rf"lr_schedule.json cannot be used: {problem}.*delete that entry"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 0


def test_the_recipes_path_warns_once_and_not_for_a_finished_run(full_run, tmp_path, caplog):
    """`train_or_restore_finished` (the recipes' resume): one warning for a resume that trains; none for a finished
    run restored at another batch (no step is trained)."""
    shutil.copytree(full_run[1], tmp_path / "checkpoint-3")
    shutil.copytree(full_run[1].parent / "checkpoint-6", tmp_path / "checkpoint-6")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert train_or_restore_finished(_trainer(tmp_path, per_device=2), str(tmp_path / "checkpoint-6")) is None
        finished = [r for r in caplog.records if r.name == LOGGER and "total train batch" in r.getMessage()]
        trainer = _trainer(tmp_path, per_device=2)
        train_or_restore_finished(trainer, str(tmp_path / "checkpoint-3"))
    assert finished == [] and trainer.state.global_step == 6
    assert len([r for r in caplog.records if r.name == LOGGER and "total train batch" in r.getMessage()]) == 1


def test_warned_once_per_launch_on_global_rank_zero(full_run, tmp_path, caplog):
    """A 1-process checkpoint (total 4) resumed on 2 processes at the same per-device batch (total 8): the message is
    the same on every rank, logged once by global rank 0 only."""
    from hf_ext.utils.resume import warn_changed_train_batch

    checkpoint = tmp_path / "checkpoint-3"
    shutil.copytree(full_run[1], checkpoint)

    def rank(index):
        args = SimpleNamespace(
            train_batch_size=4, gradient_accumulation_steps=1, world_size=2, n_gpu=0, max_steps=6,
            ignore_data_skip=False, process_index=index,
        )  # fmt: skip
        return SimpleNamespace(args=args)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        messages = [warn_changed_train_batch(rank(i), str(checkpoint)) for i in (1, 0, 0)]
    assert messages[0] == messages[1] == messages[2] and "x 2 processes" in messages[0]
    assert "e.g. --per_device_train_batch_size 2 on these processes" in messages[0]  # 2 x 1 x 2 = 4
    logged = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert logged == [messages[0]]


def test_split_batches_counts_one_loader_batch_per_step(full_run, tmp_path, caplog):
    """With accelerate's `split_batches` each batch of the loader (the per-device flag) is split over the processes:
    2 processes at per-device 4 train 4 samples per step, the 1-process checkpoint's total, and nothing is said (a
    2 x 4 count would be a false alarm); recorded and read back with the entry's `split_batches`."""
    from hf_ext.utils.resume import read_train_batch_record, run_train_batch, warn_changed_train_batch

    checkpoint = tmp_path / "checkpoint-3"
    shutil.copytree(full_run[1], checkpoint)
    args = SimpleNamespace(
        train_batch_size=4, gradient_accumulation_steps=1, world_size=2, n_gpu=0, max_steps=6, ignore_data_skip=False,
        process_index=0, accelerator_config=SimpleNamespace(split_batches=True),
    )  # fmt: skip
    split = SimpleNamespace(args=args)
    assert run_train_batch(split) == {
        "total_train_batch_size": 4, "per_device_train_batch_size": 4, "n_gpu": 0, "gradient_accumulation_steps": 1,
        "processes": 2, "split_batches": True,
    }  # fmt: skip
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert warn_changed_train_batch(split, str(checkpoint)) is None
    assert not [r for r in caplog.records if r.name == LOGGER]
    path = checkpoint / SCHEDULE_RECORD_NAME
    record = json.loads(path.read_text())
    record[TRAIN_BATCH_KEY] = run_train_batch(split)
    path.write_text(json.dumps(record))
    assert read_train_batch_record(str(checkpoint)) == run_train_batch(split)
    args.accelerator_config.split_batches = False  # now 2 x 4 = 8 samples per step
    message = warn_changed_train_batch(split, str(checkpoint))
    assert "4 x --gradient_accumulation_steps 1, each batch split over 2 processes (split_batches)" in message
    assert "this run's is 8" in message
