"""Mutation run 16: GRAPE scores without gradient clipping; task-weight averages when tasks and domains update apart.

- The domain score is the dot product `<g_k, g_tgt>` of *clipped* gradients. `quick_grape_args` clips every gradient
  of the tiny model to norm 1, where a dot product equals a cosine; with clipping off (or far above the gradient
  norms) a score divided by `|g_k|` (or any other error proportional to it) shows.
- `average_task_weights` divides by the number of *task* updates, and the checkpoint keeps that number: with
  `reweight_tasks_every != reweight_domains_every` the two counts differ, so dividing by (or saving) the domain count
  gives an `average_tasks` in `mixture.json` that does not even sum to 1.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from grape_reference import expected_domain_step, expected_task_step
from grape_synthetic import quick_grape_args

from hf_ext.grape import GrapeTrainer, MixtureState


@pytest.mark.parametrize("max_grad_norm", [0.0, 1e6])
def test_scores_are_dot_products_without_clipping(max_grad_norm, synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=3),
        args=quick_grape_args(tmp_path, reweight_method="grape", max_grad_norm=max_grad_norm, domain_step_size=50.0),
        train_dataset=train,
        target_datasets=targets,
        domain_weights={"a": 0.6, "b": 0.3, "c": 0.1},
    )
    expected_z, task_dots = expected_task_step(trainer, log_task=True)
    trainer._task_step({})
    torch.testing.assert_close(trainer.last_local_stats["task"][:2], task_dots, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(trainer.mixture_state.task_weights, expected_z, rtol=1e-5, atol=1e-7)

    expected, dots, norms = expected_domain_step(trainer, log_target=True)  # with the updated task weights
    # the unclipped gradients are not of unit norm, so a dot product and a cosine differ here
    assert min(abs(x - 1.0) for x in norms) > 0.05, norms
    trainer._domain_step({})
    stats = trainer.last_local_stats["domain"]
    k = len(trainer.mixture_state.domain_names)
    torch.testing.assert_close(stats[:k], dots, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats[k : 2 * k], torch.tensor(norms, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(trainer.mixture_state.domain_weights, expected, rtol=1e-5, atol=1e-7)
    assert float((expected - torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)).abs().max()) > 1e-3


def _state_with_four_task_updates_and_one_domain_update():
    st = MixtureState(["a", "b"], ["t1", "t2"], torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]))
    for w in ([0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.9, 0.1]):  # reweight_tasks_every=1
        st.set_task_weights(torch.tensor(w, dtype=torch.float64))
    st.set_domain_weights(torch.tensor([0.4, 0.6], dtype=torch.float64), 8)  # reweight_domains_every=4
    return st


def test_average_task_weights_count_task_updates():
    st = _state_with_four_task_updates_and_one_domain_update()
    assert (st.task_updates, st.domain_updates) == (4, 1)
    expected = torch.tensor([0.75, 0.25], dtype=torch.float64)  # the mean of the four task weight vectors
    torch.testing.assert_close(st.average_task_weights(), expected)
    torch.testing.assert_close(st.average_domain_weights(), torch.tensor([0.4, 0.6], dtype=torch.float64))
    mix = st.to_mixture_dict("grape")
    assert mix["average_tasks"] == pytest.approx({"t1": 0.75, "t2": 0.25})
    assert mix["average_domains"] == pytest.approx({"a": 0.4, "b": 0.6})


def test_state_roundtrip_keeps_unequal_update_counts(tmp_path):
    st = _state_with_four_task_updates_and_one_domain_update()
    st.save(str(tmp_path / "ck"))
    meta = json.loads((tmp_path / "ck" / "grape_state.json").read_text())
    assert (meta["task_updates"], meta["domain_updates"]) == (4, 1)
    back = MixtureState.load(str(tmp_path / "ck"))
    assert (back.task_updates, back.domain_updates) == (4, 1)
    torch.testing.assert_close(back.average_task_weights(), torch.tensor([0.75, 0.25], dtype=torch.float64))
    torch.testing.assert_close(back.average_domain_weights(), st.average_domain_weights())
    assert back.to_mixture_dict("grape") == st.to_mixture_dict("grape")


def test_trainer_average_tasks_with_tasks_and_domains_on_different_cadences(synthetic, grape_helpers, tmp_path):
    """reweight_tasks_every=1, reweight_domains_every=2 over 4 steps: 4 task updates, 2 domain updates; the exported
    and the checkpointed averages are the means of the recorded weights."""
    train, targets = synthetic
    args = quick_grape_args(
        tmp_path, reweight_method="grape", reweight_tasks_every=1, reweight_domains_every=2, save_strategy="steps",
        save_steps=4,
    )  # fmt: skip
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=3), args=args, train_dataset=train, target_datasets=targets,
        domain_weights={"a": 0.6, "b": 0.3, "c": 0.1},
    )  # fmt: skip
    trainer.train()
    st = trainer.mixture_state
    assert (st.task_updates, st.domain_updates) == (4, 2)
    records = [r for r in st.trajectory if r["step"] > 0]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    mean_tasks = torch.tensor([r["task_weights"] for r in records], dtype=torch.float64).mean(0)
    mean_domains = torch.tensor([r["domain_weights"] for r in records if r["step"] % 2 == 0], dtype=torch.float64)
    mean_domains = mean_domains.mean(0)
    torch.testing.assert_close(st.average_task_weights(), mean_tasks)
    torch.testing.assert_close(st.average_domain_weights(), mean_domains)

    mix = trainer.save_mixture()
    assert sum(mix["average_tasks"].values()) == pytest.approx(1.0)
    assert list(mix["average_tasks"].values()) == pytest.approx(mean_tasks.tolist())

    back = MixtureState.load(os.path.join(str(tmp_path), "checkpoint-4"))
    assert (back.task_updates, back.domain_updates) == (4, 2)
    torch.testing.assert_close(back.average_task_weights(), mean_tasks)
    assert back.to_mixture_dict("grape", 4) == st.to_mixture_dict("grape", 4)
