"""Mutation-testing gaps of GrapeTrainer's mixture-state bookkeeping that the other tests let through: checkpoint
name checks, per-update minibatch randomness, normalised explicit weights, what a second `train()` starts from, and
the DoReMi domain loss over label tokens only. Expected values come from the documented behaviour (GrapeTrainer.train
and load_mixture_state docstrings) or from the model's own masked loss."""

from __future__ import annotations

import pytest
import torch
from grape_synthetic import quick_grape_args as _args
from grape_synthetic import tiny_llama
from transformers import TrainerCallback

from hf_ext.grape import GrapeTrainer, MixtureState


def test_loading_a_mixture_state_of_other_domains_is_refused(tmp_path, synthetic):
    """A mixture state written for other domain (or task) names must be refused with a ValueError naming both sets:
    loaded silently, its weights would be relabelled onto this run's domains."""
    train, targets = synthetic
    MixtureState(
        domain_names=["x", "y", "z"],
        task_names=["t_a", "t_b"],
        domain_weights=torch.tensor([0.7, 0.2, 0.1]),
        task_weights=torch.tensor([0.5, 0.5]),
    ).save(str(tmp_path / "ck"))
    t = GrapeTrainer(
        model=tiny_llama(seed=1), args=_args(tmp_path / "out"), train_dataset=train, target_datasets=targets
    )
    before = t.mixture_state.domain_weights.clone()
    with pytest.raises(ValueError, match=r"was written for domains \['x', 'y', 'z'\].*this run has \['a', 'b', 'c'\]"):
        t.load_mixture_state(str(tmp_path / "ck"))
    assert t.mixture_state.domain_names == ["a", "b", "c"]
    assert torch.equal(t.mixture_state.domain_weights, before)


def test_each_reweighting_update_draws_new_domain_minibatches(tmp_path, synthetic):
    """The reweighting RNG is keyed by the global step: the updates at steps 2 and 4 draw different minibatches of
    each domain. An RNG that ignores the step would estimate every update's gradients on the very same rows."""
    train, targets = synthetic
    t = GrapeTrainer(
        model=tiny_llama(seed=1),
        args=_args(tmp_path, max_steps=4, reweight_domains_every=2, reweight_tasks_every=2),
        train_dataset=train,
        target_datasets=targets,
    )
    drawn: dict[int, list] = {}
    original = t._domain_batch

    def record(k, rng, size):
        batch = original(k, rng, size)
        drawn.setdefault(t.state.global_step, []).append((k, batch["input_ids"].tolist()))
        return batch

    t._domain_batch = record
    t.train()
    assert sorted(drawn) == [2, 4]
    by_domain = [{k: [] for k in range(3)} for _ in range(2)]
    for i, step in enumerate((2, 4)):
        for k, ids in drawn[step]:
            by_domain[i][k].append(ids)
    for k in range(3):
        assert by_domain[0][k] and by_domain[0][k] != by_domain[1][k], k


def test_explicit_domain_weights_are_normalised(tmp_path, synthetic):
    """domain_weights={a: 2, b: 1, c: 1} is a mixture of proportions 2:1:1: the state holds [0.5, 0.25, 0.25]. Kept
    unnormalised, the sampler and every update rule would work on weights summing to 4."""
    train, _ = synthetic
    t = GrapeTrainer(
        model=tiny_llama(seed=1),
        args=_args(tmp_path, reweight_method="fixed"),
        train_dataset=train,
        domain_weights={"a": 2, "b": 1, "c": 1},
    )
    assert t.mixture_state.domain_weights.tolist() == pytest.approx([0.5, 0.25, 0.25], abs=1e-12)


class _AtTrainBegin(TrainerCallback):
    """Copies the mixture state's weights and EMA losses at the start of every run."""

    def __init__(self, trainer):
        self.trainer, self.seen = trainer, []

    def on_train_begin(self, args, state, control, **kwargs):
        st = self.trainer.mixture_state
        self.seen.append(
            {
                "domain_weights": st.domain_weights.clone(),
                "task_ema_loss": st.task_ema_loss.clone(),
                "domain_ema_loss": st.domain_ema_loss.clone(),
            }
        )


def test_second_train_with_model_init_starts_from_the_initial_weights(tmp_path, synthetic):
    """GrapeTrainer.train: with `model_init` (the model is re-created, e.g. hyperparameter_search) a second train()
    starts the new run from the INITIAL mixture weights (uniform here), not from where the first run ended; otherwise
    a fresh model would be trained on the previous trial's mixture."""
    train, targets = synthetic
    kw = dict(max_steps=4, reweight_domains_every=2, reweight_tasks_every=2, domain_step_size=200.0)
    t = GrapeTrainer(
        model_init=lambda: tiny_llama(seed=1), args=_args(tmp_path, **kw), train_dataset=train, target_datasets=targets
    )
    t.train()
    end_of_first = t.mixture_state.domain_weights.clone()
    assert (end_of_first - 1 / 3).abs().max() > 0.05  # the first run moved the weights
    cb = _AtTrainBegin(t)
    t.add_callback(cb)
    t.train()
    uniform = torch.full((3,), 1 / 3, dtype=cb.seen[0]["domain_weights"].dtype)
    assert torch.allclose(cb.seen[0]["domain_weights"], uniform, atol=1e-9)
    assert t.mixture_state.trajectory[0]["domain_weights"] == pytest.approx([1 / 3] * 3, abs=1e-6)


def test_second_train_keeps_the_ema_losses_of_grape_ema(tmp_path, synthetic):
    """GrapeTrainer.train: a second train() without model_init continues from the current weights "and the EMA losses
    used by grape_ema". Right after the new run starts they equal the ones the first run ended with (finite); a reset
    would make the new run's first task update divide by other running losses."""
    train, targets = synthetic
    t = GrapeTrainer(
        model=tiny_llama(seed=1),
        args=_args(
            tmp_path, reweight_method="grape_ema", max_steps=2, reweight_domains_every=2, reweight_tasks_every=2
        ),
        train_dataset=train,
        target_datasets=targets,
    )
    t.train()
    task_ema = t.mixture_state.task_ema_loss.clone()
    domain_ema = t.mixture_state.domain_ema_loss.clone()
    assert torch.isfinite(task_ema).all() and torch.isfinite(domain_ema).all()
    cb = _AtTrainBegin(t)
    t.add_callback(cb)
    t.train()
    assert torch.equal(cb.seen[0]["task_ema_loss"], task_ema)
    assert torch.equal(cb.seen[0]["domain_ema_loss"], domain_ema)


def test_doremi_domain_loss_averages_label_tokens_only(tmp_path, synthetic):
    """The DoReMi domain loss (logged as grape/domain_loss/<d>, kept in domain_ema_loss) is the model's loss over
    label tokens, exactly what `model(**batch).loss` computes: positions labelled -100 (padding) are left out. An
    average over every position would mix padding into the logged loss."""
    train, _ = synthetic
    ids = torch.tensor(train["input_ids"][:2])
    labels = ids.clone()
    labels[:, ids.shape[1] // 2 :] = -100  # the second half is padding
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    t = GrapeTrainer(
        model=tiny_llama(seed=1),
        args=_args(tmp_path, reweight_method="doremi"),
        train_dataset=train,
        reference_model=tiny_llama(seed=2),
    )
    _, loss = t._excess_loss(batch)
    with torch.no_grad():
        reference = float(t.model(**batch).loss)
    assert loss == pytest.approx(reference, rel=1e-5)
