"""Mutation-testing kills (mu41) for the pass-35 GRAPE changes."""

from __future__ import annotations

import torch

from hf_ext.grape.rules import exponentiated_step


def test_an_overflowing_step_shifts_by_the_top_score_of_a_non_zero_weight():
    """The overflow fallback shifts the step by the largest score of a *non-zero* weight: a zero weight with a far
    larger score neither pushes every non-zero logit to -inf (NaN weights) nor becomes NaN itself (-inf + inf)."""
    got = exponentiated_step([0.0, 0.5, 0.5], [10.0, 2.0, -1.0], 1.7e308)
    torch.testing.assert_close(got, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), rtol=0, atol=0)
    got = exponentiated_step([0.0, 0.2, 0.3, 0.5], [10.0, 2.0, 2.0, -1.0], 1.7e308, smoothing=0.2)
    expected = 0.8 * torch.tensor([0.0, 0.4, 0.6, 0.0], dtype=torch.float64) + 0.05
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)


def test_doremi_resume_with_another_batch_split_or_process_count_is_refused(tmp_path):
    """DoReMi changes its mixture during the run (its schedule holds updates at sampler positions of the old split),
    so it is compared like the grape variants and doge: another per-device batch, accumulation or number of processes
    is refused before anything is restored (uniform and fixed are not)."""
    import json
    import os

    import pytest
    from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

    from hf_ext.grape import GrapeTrainer

    train, _ = synthetic_mixture()
    common = dict(max_steps=4, reweight_domains_every=2, reweight_method="doremi")
    args = quick_grape_args(tmp_path / "run", save_strategy="steps", save_steps=2, **common)
    GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, reference_model=tiny_llama(seed=1)).train()
    checkpoint = str(tmp_path / "run" / "checkpoint-2")

    def resume(**overrides):
        args = quick_grape_args(tmp_path / "resumed", **common, **overrides)
        trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, reference_model=tiny_llama(seed=1))
        trainer.train(resume_from_checkpoint=checkpoint)
        return trainer

    with pytest.raises(ValueError, match=r"per_device_train_batch_size=4 -> 2"):
        resume(per_device_train_batch_size=2)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=1 -> 2"):
        resume(gradient_accumulation_steps=2)
    path = os.path.join(checkpoint, "grape_state.json")
    with open(path, encoding="utf-8") as fh:
        meta = json.load(fh)
    meta["options"]["world_size"] = 2
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    with pytest.raises(ValueError, match=r"world_size \(the number of processes\)=2 -> 1"):
        resume()
