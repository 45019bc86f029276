"""Optimizer / scheduler state as safetensors + JSON (no pickle), for Trainer checkpoints."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

__all__ = [
    "SafetensorsOptimizerStateMixin",
    "load_optimizer_state",
    "save_optimizer_state",
    "state_from_json_and_tensors",
    "state_to_json_and_tensors",
]

OPTIMIZER_TENSORS = "optimizer_state.safetensors"
OPTIMIZER_JSON = "optimizer_state.json"
SCHEDULER_JSON = "scheduler_state.json"


def state_to_json_and_tensors(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Encode a nested state (dicts with any keys, lists, tuples, tensors, scalars) as JSON plus a tensor table."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: state_to_json_and_tensors(v, tensors, prefix) for k, v in obj.items()}}
        return {"__items__": [[k, state_to_json_and_tensors(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [state_to_json_and_tensors(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [state_to_json_and_tensors(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"Cannot store optimizer state entry of type {type(obj).__name__} as JSON/safetensors.")


def state_from_json_and_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `state_to_json_and_tensors`."""
    if isinstance(obj, list):
        return [state_from_json_and_tensors(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: state_from_json_and_tensors(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {k: state_from_json_and_tensors(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(state_from_json_and_tensors(v, tensors) for v in obj["__tuple__"])
        raise ValueError(f"Malformed optimizer state entry: {sorted(obj)}")
    return obj


def save_optimizer_state(
    optimizer: torch.optim.Optimizer, output_dir: str, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
) -> None:
    """Write `optimizer.state_dict()` to `optimizer_state.safetensors` + `optimizer_state.json` in `output_dir`
    (and the scheduler's state to `scheduler_state.json`)."""
    from safetensors.torch import save_file

    os.makedirs(output_dir, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    encoded = state_to_json_and_tensors(optimizer.state_dict(), tensors)
    save_file(tensors, os.path.join(output_dir, OPTIMIZER_TENSORS))
    with open(os.path.join(output_dir, OPTIMIZER_JSON), "w") as fh:
        json.dump(encoded, fh)
    if scheduler is not None:
        sched_tensors: dict[str, torch.Tensor] = {}
        enc = state_to_json_and_tensors(scheduler.state_dict(), sched_tensors)
        if sched_tensors:
            raise TypeError("The scheduler state holds tensors; it cannot be stored as JSON.")
        with open(os.path.join(output_dir, SCHEDULER_JSON), "w") as fh:
            json.dump(enc, fh)


def has_optimizer_state(checkpoint: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint, OPTIMIZER_JSON)) and os.path.isfile(
        os.path.join(checkpoint, OPTIMIZER_TENSORS)
    )


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, checkpoint: str, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
) -> None:
    """Restore what `save_optimizer_state` wrote into `optimizer` (and `scheduler`)."""
    from safetensors.torch import load_file

    if not has_optimizer_state(checkpoint):
        raise ValueError(f"No {OPTIMIZER_JSON} / {OPTIMIZER_TENSORS} in {checkpoint!r}; pass a checkpoint folder.")
    tensors = load_file(os.path.join(checkpoint, OPTIMIZER_TENSORS))
    with open(os.path.join(checkpoint, OPTIMIZER_JSON)) as fh:
        optimizer.load_state_dict(state_from_json_and_tensors(json.load(fh), tensors))
    path = os.path.join(checkpoint, SCHEDULER_JSON)
    if scheduler is not None and os.path.isfile(path):
        with open(path) as fh:
            scheduler.load_state_dict(state_from_json_and_tensors(json.load(fh), {}))


class SafetensorsOptimizerStateMixin:
    """`Trainer` mixin: checkpoint the optimizer (momenta, norms, Hessian estimates) and the LR scheduler as
    safetensors + JSON instead of pickled `optimizer.pt` / `scheduler.pt`; resume reads them back."""

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            save_optimizer_state(self.optimizer, output_dir, self.lr_scheduler)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from ..utils.resume import refuse_weights_only_checkpoint

        # a checkpoint saved with save_only_model=True has no optimizer state to read back: refused before anything
        # is restored, rather than resumed with a fresh optimizer and a restarted schedule
        refuse_weights_only_checkpoint(resume_from_checkpoint, "resume_from_checkpoint")
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is not None and has_optimizer_state(checkpoint):
            load_optimizer_state(self.optimizer, checkpoint, self.lr_scheduler)
            return
        super()._load_optimizer_and_scheduler(checkpoint)
