"""Pass-41 GRAPE audit fixes (gr41)."""

from __future__ import annotations

import json
import os

import pytest
from grape_synthetic import checkpointed_run, quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeTrainer


def _resume(tmp_path, train, targets, checkpoint, **overrides):
    args = quick_grape_args(tmp_path / "resumed", max_steps=4, reweight_domains_every=2, reweight_tasks_every=2,
                            **overrides)  # fmt: skip
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer


@pytest.mark.parametrize(
    "override, change",
    [
        ({"per_device_train_batch_size": 2}, r"per_device_train_batch_size=4 -> 2"),
        ({"gradient_accumulation_steps": 2}, r"gradient_accumulation_steps=1 -> 2"),
    ],
)
def test_resume_with_another_batch_split_is_refused(override, change, tmp_path):
    """The Trainer skips global_step * gradient_accumulation_steps batches of the *new* split on resume, while the
    checkpoint's schedule holds its updates at sampler positions of the old one: another split re-trained positions
    already trained, with the weights in force there (a 2-rank checkpoint resumed on 1 rank trained all 4 resumed
    steps on the weights of before the checkpoint's last update), and GRAPE's reweighting batches have the per-device
    size. It went on silently (gr41 F1)."""
    train, targets, checkpoint = checkpointed_run(tmp_path / "run")
    with pytest.raises(ValueError, match=change):
        _resume(tmp_path, train, targets, checkpoint, **override)


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    """A checkpoint written by 2 processes (its recorded world_size), resumed by 1: refused before anything is
    restored, naming the number of processes (gr41 F1)."""
    train, targets, checkpoint = checkpointed_run(tmp_path / "run")
    path = os.path.join(checkpoint, "grape_state.json")
    with open(path, encoding="utf-8") as fh:
        meta = json.load(fh)
    assert meta["options"]["world_size"] == 1
    meta["options"]["world_size"] = 2
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    args = quick_grape_args(tmp_path / "resumed", max_steps=4, reweight_domains_every=2, reweight_tasks_every=2)
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    with pytest.raises(ValueError, match=r"world_size \(the number of processes\)=2 -> 1"):
        trainer.train(resume_from_checkpoint=checkpoint)
    assert trainer.state.global_step == 0 and trainer.mixture_state.domain_updates == 0  # nothing restored


def test_uniform_resumes_with_another_batch_split(tmp_path):
    """uniform never changes its mixture, so its schedule has no update positions to miss: it resumes with another
    per-device batch as a plain Trainer does (not refused)."""
    train, _ = synthetic_mixture()
    args = quick_grape_args(tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2,
                            reweight_method="uniform")  # fmt: skip
    GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train).train()
    args = quick_grape_args(tmp_path / "resumed", max_steps=4, reweight_method="uniform",
                            per_device_train_batch_size=2)  # fmt: skip
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert trainer.state.global_step == 4
