"""Resume with `ignore_data_skip=True` (audit 2026-12-04): the Trainer restarts the resumed epoch from its first batch.

The sampler used to re-draw those positions with the weights the interrupted run had there (its *initial* mixture),
and an update after the resume only replaced the schedule's last entry, reaching no sequence before the checkpoint's
position. Now the resumed sampler starts a schedule segment holding the checkpoint's current weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from hf_ext.grape import GrapeConfig, GrapeTrainer, MixtureSampler, MixtureState

UNIFORM = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
TO_B = torch.tensor([0.05, 0.9, 0.05], dtype=torch.float64)
TO_A = torch.tensor([0.9, 0.05, 0.05], dtype=torch.float64)


def _args(out, **overrides) -> GrapeConfig:
    kw = dict(
        output_dir=str(out),
        max_steps=16,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        reweight_method="fixed",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="steps",
        save_steps=8,
        seed=0,
        samples_per_epoch=8 * 16,  # one epoch: the checkpoint at step 8 is in its middle (sampler position 64)
        dataloader_num_workers=0,
    )
    kw.update(overrides)
    return GrapeConfig(**kw)


class _Recording(GrapeTrainer):
    """Records the source domain of every training row, per step."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append([self.domain_of[tuple(r)] for r in inputs["input_ids"].tolist()])
        return super().training_step(model, inputs, num_items_in_batch)


class _SetWeights(TrainerCallback):
    """Sets the domain weights by hand after step `step` (any update gives the same picture)."""

    def __init__(self, trainer, step, weights):
        self.trainer, self.step, self.weights = trainer, step, weights

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            t = self.trainer
            t.mixture_state.set_domain_weights(self.weights, t._mixture_sampler.position)


def _trainer(out, synthetic, grape_helpers, move=None, **overrides) -> _Recording:
    train, targets = synthetic
    t = _Recording(
        model=grape_helpers["tiny_llama"](),
        args=_args(out, **overrides),
        train_dataset=train,
        target_datasets=targets,
        domain_weights=UNIFORM,
    )
    t.seen, t.domain_of = [], {tuple(r): d for r, d in zip(train["input_ids"], train["domain"])}
    if move is not None:
        t.add_callback(_SetWeights(t, *move))
    return t


def _share(batches, domain) -> float:
    return float(np.mean([d == domain for batch in batches for d in batch]))


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory, synthetic, grape_helpers):
    """16 steps; the weights move from uniform to b = 0.90 after step 7; checkpoint at step 8."""
    out = tmp_path_factory.mktemp("ignore_skip_full")
    full = _trainer(out, synthetic, grape_helpers, move=(7, TO_B))
    full.train()
    return full, out


def test_resume_with_ignore_data_skip_draws_with_the_checkpoints_weights(
    moved_run, synthetic, grape_helpers, tmp_path
):
    """The audit's table, share of b after the resume: uninterrupted 0.875, resumed 0.875, resumed with
    ignore_data_skip 0.359 (the initial mixture)."""
    full, out = moved_run
    assert _share(full.seen[8:], "b") > 0.75
    exact = _trainer(tmp_path / "exact", synthetic, grape_helpers)
    exact.train(resume_from_checkpoint=str(out / "checkpoint-8"))
    assert exact.seen == full.seen[8:]  # without ignore_data_skip: the uninterrupted run's batches, as before

    fast = _trainer(tmp_path / "fast", synthetic, grape_helpers, ignore_data_skip=True)
    fast.train(resume_from_checkpoint=str(out / "checkpoint-8"))
    assert len(fast.seen) == 8
    torch.testing.assert_close(fast.mixture_state.domain_weights, TO_B, rtol=0, atol=0)
    assert _share(fast.seen, "b") > 0.75, _share(fast.seen, "b")  # was 0.359: drawn with the initial uniform weights
    # the resumed epoch restarts at position 0: one segment from there with the checkpoint's weights
    assert [p for p, _ in fast.mixture_state.schedule] == [0]
    torch.testing.assert_close(fast.mixture_state.schedule[0][1], TO_B, rtol=0, atol=0)


def test_an_update_after_an_ignore_data_skip_resume_reaches_the_data_at_once(
    moved_run, synthetic, grape_helpers, tmp_path
):
    """An update after such a resume used to replace the checkpoint's schedule entry (position 64) and reach no
    sequence before the sampler passed position 64 again: share of a 0.271 after setting a = 0.90."""
    _, out = moved_run
    t = _trainer(tmp_path / "upd", synthetic, grape_helpers, move=(9, TO_A), ignore_data_skip=True)
    t.train(resume_from_checkpoint=str(out / "checkpoint-8"))
    assert _share(t.seen[2:], "a") > 0.75, _share(t.seen[2:], "a")  # steps 11-16
    positions = [p for p, _ in t.mixture_state.schedule]
    assert len(positions) == 2 and 0 < positions[1] < 64, positions  # the update is a new segment of the resumed run


def test_start_segment_redraws_from_the_position_with_the_current_weights():
    """Unit level: a sampler told to restart its schedule draws exactly what a sampler over the current weights alone
    draws, from the restart position on; the schedule entries before it are kept."""
    rows = [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    state = MixtureState(["a", "b", "c"], [], uniform, torch.zeros(0))
    state.set_domain_weights(torch.tensor([0.1, 0.2, 0.7]), 40)
    state.set_domain_weights(TO_B, 120)  # the current weights
    sampler = MixtureSampler(rows, state, num_samples=100, seed=3)
    sampler.set_epoch(1)  # positions 100..199: the entry at 40 stays, the one at 120 is re-drawn
    sampler.restart_schedule_on_iter = True
    drawn = list(sampler)
    assert [p for p, _ in state.schedule] == [0, 40, 100]
    torch.testing.assert_close(state.schedule[-1][1], TO_B, rtol=0, atol=0)
    assert not sampler.restart_schedule_on_iter  # once only

    reference = MixtureSampler(rows, MixtureState(["a", "b", "c"], [], TO_B, torch.zeros(0)), num_samples=100, seed=3)
    reference.set_epoch(1)
    assert drawn == list(reference)
    version = state.schedule_version
    state.start_segment(150)  # the current weights are in force from 100 on already: nothing changes
    assert state.schedule_version == version and [p for p, _ in state.schedule] == [0, 40, 100]
