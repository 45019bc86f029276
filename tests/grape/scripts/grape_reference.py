"""An independent recomputation of one GRAPE reweighting step from a `GrapeTrainer`'s own batches, shared by the
tests that check the trainer's task and domain updates (the update rules written out, not the trainer's code)."""

from __future__ import annotations

import torch


def flat_grad(model, batch, log: bool, max_norm) -> torch.Tensor:
    """The gradient of the batch loss (its log with `log`) over the trainable parameters, flattened and clipped to
    `max_norm` as the Trainer clips (0 / None: no clipping)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(**batch).loss
    grads = torch.autograd.grad(torch.log(loss) if log else loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
    if max_norm:
        flat = flat * min(1.0, max_norm / (float(flat.norm()) + 1e-6))
    return flat


def mean_grad(trainer, weights, purpose: str, kind: str, log: bool) -> torch.Tensor:
    """The mean clipped gradient over `reweight_batch_size // reweight_mini_batch_size` mixture batches of the
    per-device *train* batch size, as the GRAPE code draws them."""
    args = trainer.args
    rng = trainer._rng(purpose)
    n = args.reweight_batch_size // args.reweight_mini_batch_size
    return torch.stack(
        [
            flat_grad(trainer.model, trainer._mixture_batch(weights, rng, args.per_device_train_batch_size, kind), log,
                      args.max_grad_norm)
            for _ in range(n)
        ]
    ).mean(0)  # fmt: skip


def expected_domain_step(trainer, log_target: bool):
    """`(domain weights after one domain step, the scores <g_k, g_tgt>, the domain gradients' norms)`: aligned
    domains gain weight, log alpha_k + mu_train * <g_k, g_tgt>."""
    st, args = trainer.mixture_state, trainer.args
    g_tgt = mean_grad(trainer, st.task_weights, "target", "task", log=log_target)
    rng = trainer._rng("domain")
    grads = [
        flat_grad(trainer.model, trainer._domain_batch(k, rng, args.reweight_mini_batch_size), False, args.max_grad_norm)
        for k in range(len(st.domain_names))
    ]
    dots = torch.tensor([float(g @ g_tgt) for g in grads], dtype=torch.float64)
    weights = torch.softmax(torch.log(st.domain_weights) + args.domain_step_size * dots, 0)
    return weights, dots, [float(g.norm()) for g in grads]


def expected_task_step(trainer, log_task: bool):
    """`(task weights after one task step, the scores <h_n, g_alpha>)`: fast-improving tasks lose weight,
    log z_n - mu_tgt * <h_n, g_alpha>, then smoothing."""
    st, args = trainer.mixture_state, trainer.args
    g_mix = mean_grad(trainer, st.domain_weights, "mixture", "domain", log=False)
    rng = trainer._rng("task")
    dots = torch.tensor(
        [
            float(flat_grad(trainer.model, trainer._task_batch(n, rng, args.reweight_mini_batch_size), log_task,
                            args.max_grad_norm) @ g_mix)
            for n in range(len(st.task_names))
        ],
        dtype=torch.float64,
    )  # fmt: skip
    z = torch.softmax(torch.log(st.task_weights) - args.task_step_size * dots, 0)
    return (1 - args.task_smoothing) * z + args.task_smoothing / z.numel(), dots
