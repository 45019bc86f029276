"""A Trainer for FP8 pretraining: FP8 recipe kwargs for its Accelerator, the model's own weight-decay grouping, and a
warmup-stable-decay schedule whose cooldown length can be given as a fraction of the run."""

from __future__ import annotations

import math

from transformers import Trainer
from transformers.trainer_utils import SchedulerType


def resolve_wsd_kwargs(kwargs: dict | None, num_training_steps: int) -> dict:
    """`lr_scheduler_kwargs` for transformers' `warmup_stable_decay` with a fractional `num_decay_steps` resolved.

    transformers' `get_wsd_schedule` needs `num_decay_steps` as a step count; like `warmup_steps`, a float in (0, 1)
    here means that fraction of `num_training_steps` (the FOG reference cools down over the last 20%: 0.2).

    Args:
        kwargs (`dict`, *optional*): The user's `lr_scheduler_kwargs`.
        num_training_steps (`int`): Total optimizer steps of the run.

    Returns:
        `dict`: A copy with an integer `num_decay_steps`.
    """
    out = dict(kwargs or {})
    if "num_decay_steps" not in out:
        raise ValueError(
            "lr_scheduler_type='warmup_stable_decay' needs num_decay_steps in lr_scheduler_kwargs (steps, or a float "
            'in (0, 1) for a fraction of the run), e.g. --lr_scheduler_kwargs \'{"num_decay_steps": 0.2, '
            '"decay_type": "1-sqrt"}\'.'
        )
    n = out["num_decay_steps"]
    if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n) or n <= 0:
        raise ValueError(
            f"lr_scheduler_kwargs num_decay_steps={n!r} must be a positive number of steps or a fraction in (0, 1)."
        )
    if isinstance(n, float) and not n.is_integer():
        if not 0.0 < n < 1.0:
            raise ValueError(f"lr_scheduler_kwargs num_decay_steps={n} must be an int or a fraction in (0, 1).")
        out["num_decay_steps"] = max(1, round(n * num_training_steps))
    else:
        out["num_decay_steps"] = int(n)
    if out["num_decay_steps"] > num_training_steps:
        raise ValueError(
            f"lr_scheduler_kwargs num_decay_steps={out['num_decay_steps']} exceeds the run's {num_training_steps} "
            "steps; lower it or raise max_steps."
        )
    return out


class Fp8Trainer(Trainer):
    """`Trainer` for FP8 pretraining (`accelerate launch --mixed_precision fp8`, or a model converted with
    [`convert`]).

    - adds `fp8_recipe_kwargs` (default: torchao with every block linear in FP8, only the LM head kept out; see
      [`ao_recipe_kwargs`]) to the Accelerator's handlers when mixed precision is fp8;
    - decays exactly the parameters the model names in `decay_parameter_names()` (FOG: matrices only, as the
      reference does; no decay on norm gains, xIELU scalars, biases), falling back to `Trainer`'s name patterns for
      models without that method;
    - with `lr_scheduler_type="warmup_stable_decay"`, accepts a fractional `num_decay_steps` in
      `lr_scheduler_kwargs` (see [`resolve_wsd_kwargs`]) and otherwise uses transformers' own WSD schedule.

    Without fp8 mixed precision it trains like `Trainer` with the two optimizer/schedule rules above.

    Args:
        fp8_recipe_kwargs (*optional*): An accelerate recipe handler (`AORecipeKwargs`, `TERecipeKwargs`).
        *args, **kwargs: As `Trainer`.
    """

    def __init__(self, *args, fp8_recipe_kwargs=None, **kwargs):
        self.fp8_recipe_kwargs = fp8_recipe_kwargs
        self._fp8_model = kwargs.get("model") if "model" in kwargs else (args[0] if args else None)
        super().__init__(*args, **kwargs)

    def _build_accelerator_args(self, **kwargs):
        out = super()._build_accelerator_args(**kwargs)
        if getattr(self.args, "mixed_precision", "no") != "fp8":
            return out
        handler = self.fp8_recipe_kwargs
        if handler is None:
            from .convert import ao_recipe_kwargs

            handler = ao_recipe_kwargs(self._fp8_model)
        out["kwargs_handlers"] = [*(out.get("kwargs_handlers") or []), handler]
        out["mixed_precision"] = "fp8"
        return out

    def get_decay_parameter_names(self, model) -> list[str]:
        own = getattr(model, "decay_parameter_names", None)
        if not callable(own):
            return super().get_decay_parameter_names(model)
        # The method may belong to a wrapped model (peft's PeftModel forwards attribute lookups to it), whose names
        # lack the wrapper's prefix: match parameters by identity and return the names `model` itself uses.
        owner = getattr(own, "__self__", model)
        names = set(own())
        chosen = {id(p) for n, p in owner.named_parameters() if n in names}
        return [n for n, p in model.named_parameters() if id(p) in chosen]

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if (
            self.lr_scheduler is not None
            or SchedulerType(self.args.lr_scheduler_type) != SchedulerType.WARMUP_STABLE_DECAY
        ):
            return super().create_scheduler(num_training_steps, optimizer)
        original = self.args.lr_scheduler_kwargs
        self.args.lr_scheduler_kwargs = resolve_wsd_kwargs(original, num_training_steps)
        try:
            return super().create_scheduler(num_training_steps, optimizer)
        finally:
            self.args.lr_scheduler_kwargs = original
