"""Tests written to kill hand-made mutants of the GRAPE math that the other tests let through.

Every expected value here comes from an independent reference: float64 closed forms written from the update rules
(docs/grape.md), per-token losses recomputed from the model's logits, brute-force sampling frequencies with fixed
seeds and honest tolerances.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from grape_synthetic import quick_grape_args as _args

from hf_ext.grape import (
    GrapeTrainer,
    MixtureSampler,
    MixtureState,
    doge_domain_weights,
    doremi_domain_weights,
    export_mixture,
)
from hf_ext.grape.sampler import _CHUNK

SIZES = (50, 120, 80)


def _state(weights=(0.2, 0.3, 0.5)) -> MixtureState:
    return MixtureState(["a", "b", "c"], ["t1", "t2"], torch.tensor(weights), torch.tensor([0.5, 0.5]))


def _indices() -> list[list[int]]:
    out, start = [], 0
    for n in SIZES:
        out.append(list(range(start, start + n)))
        start += n
    return out


def _domain_of(rows) -> np.ndarray:
    return np.searchsorted(np.cumsum(SIZES), np.asarray(rows), side="right")


def _softmax(logits: list[float]) -> list[float]:
    m = max(logits)
    e = [math.exp(x - m) for x in logits]
    return [x / sum(e) for x in e]


# ---- rules: closed forms ---------------------------------------------------------------------------------------------
def test_doge_clip_bounds_are_in_units_of_the_learning_rate():
    # score_k = lr * dot_k / mean ||g||, clipped to [lr * 0, lr * 5]; log alpha += score / mu.
    lr, mu = 1e-2, 0.01
    dots, norms = [100.0, -100.0, 1.0], [1.0, 1.0, 1.0]
    out = doge_domain_weights([1 / 3] * 3, dots, norms, lr, mu=mu, score_min=0.0, score_max=5.0)
    raw = [lr * d / (1.0 + 1e-6) for d in dots]
    clipped = [min(max(s, lr * 0.0), lr * 5.0) for s in raw]  # [0.05, 0, ~0.01]
    expected = _softmax([math.log(1 / 3) + s / mu for s in clipped])
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    # the largest log-weight move of one update is score_max * lr / mu = 5
    assert math.log(out[0] / out[1]) == pytest.approx(5.0, abs=1e-9)


def test_doremi_step_applies_smoothing_and_its_default():
    w, excess, eta = [0.2, 0.8], [0.5, 0.0], 2.0
    base = _softmax([math.log(0.2) + eta * 0.5, math.log(0.8)])
    for smoothing in (0.1, None):
        eps = 1e-4 if smoothing is None else smoothing  # DoReMi code default smoothing 1e-4
        kw = {} if smoothing is None else {"smoothing": smoothing}
        out = doremi_domain_weights(w, excess, eta=eta, **kw)
        expected = torch.tensor([(1 - eps) * b + eps / 2 for b in base], dtype=torch.float64)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)


# ---- sampler: brute-force frequencies ----------------------------------------------------------------------------------
def test_rows_within_a_domain_are_drawn_uniformly():
    sampler = MixtureSampler(_indices(), _state(), num_samples=30000, seed=5)
    rows = np.asarray(list(sampler))
    dom = _domain_of(rows)
    start = 0
    for k, n in enumerate(SIZES):
        counts = np.bincount(rows[dom == k] - start, minlength=n)
        expected = (dom == k).sum() / n  # 75 to 187 draws per row
        # every row is drawn, none more than 6 standard deviations away from the uniform expectation
        assert counts.min() > 0, (k, counts)
        assert np.abs(counts - expected).max() < 6 * math.sqrt(expected) + 1, (k, counts, expected)
        start += n


def test_uniforms_are_fresh_in_every_chunk():
    sampler = MixtureSampler(_indices(), _state(), num_samples=2 * _CHUNK + 16, seed=0)
    rows = list(sampler)
    first, second = rows[:_CHUNK], rows[_CHUNK : 2 * _CHUNK]
    # independent draws agree on a position with probability sum_k w_k^2 / n_k < 1%; a repeated chunk agrees everywhere
    assert np.mean(np.asarray(first) == np.asarray(second)) < 0.05


def test_position_counts_indices_handed_out_and_updates_apply_from_there():
    state = _state((1.0, 0.0, 0.0))
    sampler = MixtureSampler(_indices(), state, num_samples=40, seed=3)
    drawn = []
    for i, row in enumerate(sampler):
        drawn.append(row)
        if i == 9:
            assert sampler.position == 10
            state.set_domain_weights(torch.tensor([0.0, 0.0, 1.0]), sampler.position)
    assert state.schedule[-1][0] == 10
    assert set(_domain_of(drawn[:10])) == {0} and set(_domain_of(drawn[10:])) == {2}
    assert list(MixtureSampler(_indices(), state, num_samples=40, seed=3)) == drawn  # replay
    # weights_at is the schedule read with "from position p on"
    assert state.weights_at(9)[0] == 1.0 and state.weights_at(10)[2] == 1.0


def test_second_epoch_is_drawn_with_the_weights_in_force_at_its_run_positions():
    state = _state()
    sampler = MixtureSampler(_indices(), state, num_samples=500, seed=1)
    list(sampler)
    assert sampler.position == 500
    state.set_domain_weights(torch.tensor([0.0, 1.0, 0.0]), sampler.position)
    sampler.set_epoch(1)
    assert set(_domain_of(list(sampler))) == {1}


# ---- state files --------------------------------------------------------------------------------------------------------
def test_loaded_schedule_replays_the_stream_and_averages_are_time_means(tmp_path):
    state = _state()
    w1, w2 = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.1, 0.1, 0.8])
    sampler = MixtureSampler(_indices(), state, num_samples=300, seed=4)
    drawn = []
    for i, row in enumerate(sampler):
        drawn.append(row)
        if i == 99:
            state.set_domain_weights(w1, sampler.position)
        if i == 199:
            state.set_domain_weights(w2, sampler.position)
    state.save(str(tmp_path / "ck"))
    back = MixtureState.load(str(tmp_path / "ck"))
    assert [p for p, _ in back.schedule] == [0, 100, 200]
    for (_, a), (_, b) in zip(back.schedule, state.schedule):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert list(MixtureSampler(_indices(), back, num_samples=300, seed=4)) == drawn
    mean = ((w1.double() + w2.double()) / 2).tolist()
    torch.testing.assert_close(back.average_domain_weights(), torch.tensor(mean, dtype=torch.float64))
    data = export_mixture(back, str(tmp_path / "mix.json"), "grape")
    assert list(data["average_domains"].values()) == pytest.approx(mean, abs=1e-12)


# ---- trainer: updates recomputed from the model ----------------------------------------------------------------------------
def _next_token_loss(model, batch) -> torch.Tensor:
    """The mean next-token loss written out (log-softmax of the logits in their dtype, at least float32): transformers'
    own `.loss` is computed in float32 whatever the logits, so it is no float64 reference (rv22)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum() / mask.sum()


def _clipped_grad(model, batch, max_norm: float) -> tuple[torch.Tensor, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = _next_token_loss(model, batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
    return flat.detach().double() * min(1.0, max_norm / (float(flat.norm()) + 1e-6)), float(loss.detach())


# A float64 model's reweighting runs in float64 (gr21 F1: the gradients, losses and logits used to be cut to float32,
# 2.25e-7 off a float64 reference for GRAPE and 2.6e-8 for DoReMi): matched to 1e-12 there, to float32 slack otherwise.
TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-7), torch.float64: dict(rtol=1e-12, atol=1e-14)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grape_ema_divides_the_improvement_by_the_running_task_loss(synthetic, grape_helpers, tmp_path, dtype):
    train, targets = synthetic
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=3).to(dtype),
        args=_args(tmp_path, reweight_method="grape_ema", task_smoothing=0.0, ema_beta=0.9),
        train_dataset=train,
        target_datasets=targets,
        domain_weights={"a": 0.6, "b": 0.3, "c": 0.1},
    )
    st, args, model = trainer.mixture_state, trainer.args, trainer.model
    assert (args.per_device_train_batch_size, args.reweight_batch_size, args.reweight_mini_batch_size) == (4, 4, 2)
    ema = [None, None]
    for step in (0, 1):  # two updates at different steps: different minibatches, so the EMA mixes two losses
        trainer.state.global_step = step
        rng = trainer._rng("mixture")
        g_mix = torch.stack(
            [
                # 4 // 2 gradients, each over a batch of per_device_train_batch_size (4) sequences, as the GRAPE code
                _clipped_grad(model, trainer._mixture_batch(st.domain_weights, rng, 4, "domain"), 1.0)[0]
                for _ in range(2)
            ]
        ).mean(0)
        rng = trainer._rng("task")
        scores = []
        for n in range(2):
            h, loss = _clipped_grad(model, trainer._task_batch(n, rng, 2), 1.0)
            ema[n] = loss if ema[n] is None else 0.9 * ema[n] + 0.1 * loss
            scores.append(float(h @ g_mix) / ema[n])
        expected = _softmax([math.log(float(z)) - args.task_step_size * s for z, s in zip(st.task_weights, scores)])
        trainer._task_step({})
        torch.testing.assert_close(st.task_ema_loss, torch.tensor(ema, dtype=torch.float64), **TOLERANCES[dtype])
        torch.testing.assert_close(st.task_weights, torch.tensor(expected, dtype=torch.float64), **TOLERANCES[dtype])
    assert abs(float(st.task_weights[0]) - 0.5) > 1e-3


def _token_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits.double()
    labels = batch["labels"]
    logits, labels = logits[:, :-1], labels[:, 1:]  # position t predicts token t+1
    mask = labels != -100
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return ce, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_doremi_step_uses_clipped_excess_loss_of_shifted_tokens(synthetic, grape_helpers, tmp_path, dtype):
    train, _ = synthetic
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=3).to(dtype),
        args=_args(tmp_path, reweight_method="doremi", doremi_eta=3.0, doremi_smoothing=0.05, ema_beta=0.9),
        train_dataset=train,
        reference_model=grape_helpers["tiny_llama"](seed=9).to(dtype),
        domain_weights={"a": 0.5, "b": 0.3, "c": 0.2},
    )
    st = trainer.mixture_state
    ema = [None] * 3
    for step in (0, 1):
        trainer.state.global_step = step
        rng = trainer._rng("domain")
        excess = []
        with torch.no_grad():
            for k in range(3):
                batch = trainer._domain_batch(k, rng, 2)
                lp, mask = _token_losses(trainer.model, batch)
                lr, _ = _token_losses(trainer.reference_model, batch)
                excess.append(float(((lp - lr).clamp(min=0) * mask).sum() / mask.sum()))
                # the shifted mean loss (HF's model loss, computed in float64: transformers' loss upcasts to float32)
                loss = float((lp * mask).sum() / mask.sum())
                ema[k] = loss if ema[k] is None else 0.9 * ema[k] + 0.1 * loss
        base = _softmax([math.log(float(w)) + 3.0 * e for w, e in zip(st.domain_weights, excess)])
        expected = [(1 - 0.05) * b + 0.05 / 3 for b in base]
        trainer._domain_step({})
        torch.testing.assert_close(st.domain_weights, torch.tensor(expected, dtype=torch.float64), **TOLERANCES[dtype])
        torch.testing.assert_close(st.domain_ema_loss, torch.tensor(ema, dtype=torch.float64), **TOLERANCES[dtype])
    assert max(excess) > 0 and abs(float(st.domain_weights[0]) - 0.5) > 1e-3


def test_task_step_runs_before_domain_step_at_the_update_steps(synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=3),
        args=_args(
            tmp_path,
            reweight_method="grape",
            reweight_domains_every=2,
            reweight_tasks_every=2,
            per_device_train_batch_size=2,
        ),
        train_dataset=train,
        target_datasets=targets,
    )
    calls = []
    task_step, domain_step = trainer._task_step, trainer._domain_step

    def record_task(logs):
        calls.append(("task", int(trainer.state.global_step)))
        task_step(logs)

    def record_domain(logs):
        # the domain step aims at the target mixture of the task weights just updated
        calls.append(("domain", int(trainer.state.global_step), trainer.mixture_state.task_updates))
        domain_step(logs)

    trainer._task_step, trainer._domain_step = record_task, record_domain
    trainer.train()
    assert calls == [("task", 2), ("domain", 2, 1), ("task", 4), ("domain", 4, 2)]
    assert [r["step"] for r in trainer.mixture_state.trajectory] == [0, 2, 4]
