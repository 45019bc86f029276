"""The updates inside GrapeTrainer, recomputed independently: signs, log-loss gradients, clipping, and DoGE at defaults.

The trainer's own minibatch draws are reused (same seeded generators), but every gradient, dot product and softmax
step below is computed here from the model, so negating a score, dropping the log, or swapping the rules fails.
"""

from __future__ import annotations

import pytest
import torch
from grape_reference import expected_domain_step, expected_task_step
from grape_synthetic import quick_grape_args as _args

from hf_ext.grape import GrapeConfig, GrapeTrainer


def _expected_domain_weights(trainer, log_target: bool):
    weights, dots, _ = expected_domain_step(trainer, log_target)
    return weights, dots


def _expected_task_weights(trainer, log_task: bool):
    return expected_task_step(trainer, log_task)


@pytest.mark.parametrize("method,log", [("grape", True), ("grape_gap", False)])
def test_trainer_updates_follow_the_grape_rules(method, log, synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=3),
        args=_args(tmp_path, reweight_method=method),
        train_dataset=train,
        target_datasets=targets,
        domain_weights={"a": 0.6, "b": 0.3, "c": 0.1},
    )
    expected_z, task_dots = _expected_task_weights(trainer, log_task=log)
    trainer._task_step({})
    torch.testing.assert_close(trainer.mixture_state.task_weights, expected_z, rtol=1e-5, atol=1e-7)
    assert float((expected_z - 0.5).abs().max()) > 1e-3  # the step is not trivially zero
    torch.testing.assert_close(trainer.last_local_stats["task"][:2], task_dots, rtol=1e-5, atol=1e-7)

    expected_alpha, _ = _expected_domain_weights(trainer, log_target=log)  # with the updated task weights
    trainer._domain_step({})
    torch.testing.assert_close(trainer.mixture_state.domain_weights, expected_alpha, rtol=1e-5, atol=1e-7)
    assert float((expected_alpha - torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)).abs().max()) > 1e-3


def test_doge_is_the_grape_repository_baseline(synthetic, grape_helpers, tmp_path):
    """reweight_method='doge': GRAPE's domain step towards the fixed task mixture (log-loss target gradient)."""
    train, targets = synthetic
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=3),
        args=_args(tmp_path, reweight_method="doge"),
        train_dataset=train,
        target_datasets=targets,
        task_weights={"t_a": 0.2, "t_b": 0.8},
    )
    expected_alpha, _ = _expected_domain_weights(trainer, log_target=True)
    trainer._domain_step({})
    torch.testing.assert_close(trainer.mixture_state.domain_weights, expected_alpha, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(trainer.mixture_state.task_weights, torch.tensor([0.2, 0.8], dtype=torch.float64))


def test_doge_moves_towards_the_helpful_domain_at_defaults(synthetic, grape_helpers, tmp_path):
    """Every DoGE setting at its default (step size, clipping, learning rate, batch sizes); only the cadence is short."""
    train, targets = synthetic
    args = GrapeConfig(
        output_dir=str(tmp_path), max_steps=4, reweight_method="doge", reweight_domains_every=2, report_to="none",
        use_cpu=True, disable_tqdm=True, save_strategy="no", per_device_train_batch_size=4, seed=0,
    )  # fmt: skip
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](), args=args, train_dataset=train, target_datasets={"t_b": targets["t_b"]}
    )  # only domain b serves the target
    trainer.train()
    st = trainer.mixture_state
    assert st.domain_updates == 2
    first = st.trajectory[1]["domain_weights"]
    w = dict(zip(st.domain_names, st.domain_weights.tolist()))
    # one update moves the log weights by far more than the ~2e-3 of a frozen rule, and towards b
    assert max(abs(torch.log(torch.tensor(first)) - torch.log(torch.tensor([1 / 3] * 3)))) > 0.05
    assert w["b"] > w["a"] and w["b"] > w["c"] and w["b"] > 1 / 3 + 0.05, w
