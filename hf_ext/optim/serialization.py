"""Optimizer / scheduler state as safetensors + JSON (no pickle), for Trainer checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
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
    (and the scheduler's state to `scheduler_state.json`).

    The files of one save are read back together, so a save into a folder that holds an earlier one never leaves a
    mix of the two: both states are encoded and the tensors written to a temporary file first (a failure there leaves
    the earlier save as it was); then the earlier `optimizer_state.json` (and `scheduler_state.json`) is removed, the
    tensors renamed into place, and each JSON written atomically, `optimizer_state.json` last. A save killed after
    the removal leaves a folder that [`load_optimizer_state`] refuses by name as interrupted."""
    from safetensors.torch import save_file

    from ..utils.io import atomic_write_json, give_default_permissions

    tensors: dict[str, torch.Tensor] = {}
    encoded = state_to_json_and_tensors(optimizer.state_dict(), tensors)
    enc = None
    if scheduler is not None:
        sched_tensors: dict[str, torch.Tensor] = {}
        enc = state_to_json_and_tensors(scheduler.state_dict(), sched_tensors)
        if sched_tensors:
            raise TypeError("The scheduler state holds tensors; it cannot be stored as JSON.")
    os.makedirs(output_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=f".{OPTIMIZER_TENSORS}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        give_default_permissions(tmp, like=os.path.join(output_dir, OPTIMIZER_TENSORS))
        for name in (OPTIMIZER_JSON, SCHEDULER_JSON):  # the earlier save's: from here on, no complete save is there
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, name))
        os.replace(tmp, os.path.join(output_dir, OPTIMIZER_TENSORS))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if enc is not None:
        atomic_write_json(os.path.join(output_dir, SCHEDULER_JSON), enc, None)
    atomic_write_json(os.path.join(output_dir, OPTIMIZER_JSON), encoded, None)  # last: the save is complete


def has_optimizer_state(checkpoint: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint, OPTIMIZER_JSON)) and os.path.isfile(
        os.path.join(checkpoint, OPTIMIZER_TENSORS)
    )


def _any_optimizer_file(checkpoint: str) -> bool:
    """Whether `checkpoint` holds a file of [`save_optimizer_state`] (complete or not)."""
    return any(
        os.path.isfile(os.path.join(checkpoint, n)) for n in (OPTIMIZER_JSON, OPTIMIZER_TENSORS, SCHEDULER_JSON)
    )


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, checkpoint: str, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
) -> None:
    """Restore what `save_optimizer_state` wrote into `optimizer` (and `scheduler`)."""
    from safetensors.torch import load_file

    if not has_optimizer_state(checkpoint):
        if _any_optimizer_file(checkpoint):
            raise ValueError(
                f"{checkpoint!r} holds an incomplete optimizer state (no {OPTIMIZER_JSON}, which a save writes last: "
                "a save that was interrupted); load the optimizer state of another checkpoint, or start it anew."
            )
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
        # a checkpoint with hf_ext's files, complete or not (an interrupted save is refused, not resumed with a fresh
        # optimizer as transformers would without its own files)
        if checkpoint is not None and _any_optimizer_file(checkpoint):
            load_optimizer_state(self.optimizer, checkpoint, self.lr_scheduler)
            return
        super()._load_optimizer_and_scheduler(checkpoint)
