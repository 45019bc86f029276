"""The updates inside GrapeTrainer, recomputed independently: signs, log-loss gradients, clipping, and DoGE at defaults.

The trainer's own minibatch draws are reused (same seeded generators), but every gradient, dot product and softmax
step below is computed here from the model, so negating a score, dropping the log, or swapping the rules fails.
"""

from __future__ import annotations

import pytest
import torch
from grape_synthetic import quick_grape_args as _args

from hf_ext.grape import GrapeConfig, GrapeTrainer


def _clipped_grad(model, batch, log: bool, max_norm: float) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(**batch).loss
    grads = torch.autograd.grad(torch.log(loss) if log else loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
    return flat * min(1.0, max_norm / (float(flat.norm()) + 1e-6))


def _mean_grad(trainer, weights, purpose: str, kind: str, log: bool) -> torch.Tensor:
    args = trainer.args
    rng = trainer._rng(purpose)
    n = args.reweight_batch_size // args.reweight_mini_batch_size
    grads = [
        _clipped_grad(trainer.model, trainer._mixture_batch(weights, rng, args.per_device_train_batch_size, kind), log,
                      args.max_grad_norm)
        for _ in range(n)
    ]  # fmt: skip  # as the GRAPE code: reweight_batch // mini batches of the per-device *train* batch size
    return torch.stack(grads).mean(0)


def _expected_domain_weights(trainer, log_target: bool) -> torch.Tensor:
    st, args = trainer.mixture_state, trainer.args
    g_tgt = _mean_grad(trainer, st.task_weights, "target", "task", log=log_target)
    rng = trainer._rng("domain")
    dots = torch.tensor(
        [
            float(_clipped_grad(trainer.model, trainer._domain_batch(k, rng, args.reweight_mini_batch_size), False,
                                args.max_grad_norm) @ g_tgt)
            for k in range(len(st.domain_names))
        ],
        dtype=torch.float64,
    )  # fmt: skip
    # aligned domains gain weight: log alpha_k + mu_train * <g_k, g_tgt>
    return torch.softmax(torch.log(st.domain_weights) + args.domain_step_size * dots, 0), dots


def _expected_task_weights(trainer, log_task: bool) -> torch.Tensor:
    st, args = trainer.mixture_state, trainer.args
    g_mix = _mean_grad(trainer, st.domain_weights, "mixture", "domain", log=False)
    rng = trainer._rng("task")
    dots = torch.tensor(
        [
            float(_clipped_grad(trainer.model, trainer._task_batch(n, rng, args.reweight_mini_batch_size), log_task,
                                args.max_grad_norm) @ g_mix)
            for n in range(len(st.task_names))
        ],
        dtype=torch.float64,
    )  # fmt: skip
    # fast-improving tasks lose weight: log z_n - mu_tgt * <h_n, g_alpha>, then smoothing
    z = torch.softmax(torch.log(st.task_weights) - args.task_step_size * dots, 0)
    return (1 - args.task_smoothing) * z + args.task_smoothing / z.numel(), dots


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
