"""Trapezoid learning-rate schedule: linear warmup, constant, linear cooldown to zero over the last fraction."""

from __future__ import annotations

import torch

from ..utils.checks import is_int, is_real

__all__ = ["TrapezoidSchedule", "get_trapezoid_schedule"]


class TrapezoidSchedule:
    """LR multiplier of a trapezoid schedule (a picklable/JSON-able callable for `torch.optim.lr_scheduler.LambdaLR`).

    `factor(s) = (s + 1) / warmup_steps` while `s < warmup_steps`, then 1, then `(N - s) / cooldown_steps` over the
    last `cooldown_steps = round(cooldown_fraction * N)` steps (so the last step uses `1 / cooldown_steps` and the
    factor reaches 0 at `s = N`).

    Args:
        num_training_steps (`int`): total optimizer steps `N`.
        warmup_steps (`int`, *optional*, defaults to 0): linear warmup length (0 = no warmup).
        cooldown_fraction (`float`, *optional*, defaults to 0.5): fraction of `N` spent in the linear cooldown.
    """

    def __init__(self, num_training_steps: int, warmup_steps: int = 0, cooldown_fraction: float = 0.5):
        if not is_int(num_training_steps) or num_training_steps <= 0:
            raise ValueError(f"`num_training_steps` must be a positive int, got {num_training_steps!r}.")
        if not is_int(warmup_steps) or warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be a non-negative int, got {warmup_steps!r}.")
        if not is_real(cooldown_fraction) or not 0.0 <= cooldown_fraction <= 1.0:
            raise ValueError(f"`cooldown_fraction` must lie in [0, 1], got {cooldown_fraction}.")
        cooldown = round(cooldown_fraction * num_training_steps)
        if warmup_steps + cooldown > num_training_steps:
            raise ValueError(
                f"warmup ({warmup_steps}) + cooldown ({cooldown}) steps exceed num_training_steps "
                f"({num_training_steps}); shorten the warmup or lower `cooldown_fraction`."
            )
        self.num_training_steps = num_training_steps
        self.warmup_steps = warmup_steps
        self.cooldown_steps = cooldown

    def __call__(self, step: int) -> float:
        n, w, c = self.num_training_steps, self.warmup_steps, self.cooldown_steps
        if step < w:
            return (step + 1) / w
        if c > 0 and step >= n - c:
            return max(0.0, (n - step) / c)
        return 1.0


def get_trapezoid_schedule(
    optimizer: torch.optim.Optimizer, num_training_steps: int, warmup_steps: int = 0, cooldown_fraction: float = 0.5
) -> torch.optim.lr_scheduler.LambdaLR:
    """The trapezoid as transformers' `get_wsd_schedule` (linear warmup from 0 over `warmup_steps`, constant, linear
    decay to 0 over the last `round(cooldown_fraction * num_training_steps)` steps). It equals `TrapezoidSchedule`
    except during warmup, where transformers' factor is `s / warmup_steps` (0 at the first step) instead of
    `(s + 1) / warmup_steps`.

    Example:
        ```python
        >>> sched = get_trapezoid_schedule(optimizer, num_training_steps=1000, warmup_steps=50)
        >>> trainer = Trainer(model, args, optimizers=(optimizer, sched), ...)
        ```
    """
    from transformers.optimization import get_wsd_schedule

    shape = TrapezoidSchedule(num_training_steps, warmup_steps, cooldown_fraction)  # validates the arguments
    return get_wsd_schedule(
        optimizer,
        num_warmup_steps=warmup_steps,
        num_decay_steps=shape.cooldown_steps,
        num_training_steps=num_training_steps,
        decay_type="linear",
    )
