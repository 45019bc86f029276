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


@pytest.mark.parametrize(
    "rule, weights, scores, step, expected",
    [
        ("domain", [0.5, 0.5], [2.0, -1.0], 1.7e308, [1.0, 0.0]),
        ("domain", [0.2, 0.3, 0.5], [2.0, 2.0, -1.0], 1.7e308, [0.4, 0.6, 0.0]),  # ties keep their ratio
        ("domain", [0.0, 1.0], [1e308, 0.0], 10.0, [0.0, 1.0]),  # a zero weight stays zero
        ("task", [0.5, 0.5], [2.0, -3.0], 1.7e308, [0.0005, 0.9995]),
    ],
)
def test_an_overflowing_step_gives_its_limit_not_nan(rule, weights, scores, step, expected):
    """`step_size * score` beyond float64 (any finite step_size is accepted) made the weights NaN (`inf - inf` in the
    softmax, `-inf + inf` for a zero weight), which the trainer refused only at that update, mid-training (gr41 F2).
    The limit of the step is all weight on the top scores."""
    import torch

    from hf_ext.grape.rules import grape_domain_weights, grape_task_weights

    fn = grape_domain_weights if rule == "domain" else grape_task_weights
    got = fn(weights, scores, step)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)


def test_target_and_stream_names_that_do_not_sort_are_refused_by_name(tmp_path):
    """Domains and tasks are kept in sorted name order: mixed int / str names failed with a raw TypeError from
    sorted() (gr41 left-alone)."""
    from datasets import IterableDataset

    train, targets = synthetic_mixture()
    mixed = {1: next(iter(targets.values())), **targets}
    args = quick_grape_args(tmp_path / "run", max_steps=2)
    with pytest.raises(TypeError, match=r"^target_datasets names must be of one kind .*\(int, str\)"):
        GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=mixed)
    stream = IterableDataset.from_generator(lambda: iter([{"input_ids": [1, 2, 3]}]))
    with pytest.raises(TypeError, match=r"^train_dataset names must be of one kind"):
        GrapeTrainer(model=tiny_llama(), args=args, train_dataset={"a": stream, 2: stream}, target_datasets=targets)
