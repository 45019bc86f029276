"""Serialise nested training state (optimizer state dicts, filter buffers) as safetensors + JSON, without pickle."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..utils.distributed import is_dtensor


def _to_tree(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        if is_dtensor(obj):
            raise TypeError(
                f"The tensor at {prefix!r} is a DTensor (a shard, e.g. under FSDP2): gather it into the whole tensor "
                "with full_tensor() on every rank before saving, or only this rank's shard would be written."
            )
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _to_tree(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_tree(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_to_tree(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"Cannot serialise a {type(obj).__name__} at {prefix!r} without pickle.")


def _from_tree(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__dict__" in tree:
            return {k: _from_tree(v, tensors) for k, v in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(_from_tree(v, tensors) for v in tree["__tuple__"])
        raise ValueError(f"Malformed state tree node with keys {sorted(tree)}.")
    if isinstance(tree, list):
        return [_from_tree(v, tensors) for v in tree]
    return tree


def save_state(obj: Any, path_prefix: str) -> None:
    """Write `obj` (nested dicts/lists/tuples of tensors and JSON scalars) to `<prefix>.safetensors` + `<prefix>.json`,
    each atomically (temporary file, then rename): a save that fails half-way leaves no half-written file."""
    from safetensors.torch import save

    from ..utils.io import atomic_open

    tensors: dict[str, torch.Tensor] = {}
    tree = _to_tree(obj, "root", tensors)
    with atomic_open(f"{path_prefix}.safetensors", "wb") as fh:
        fh.write(save(tensors))
    with atomic_open(f"{path_prefix}.json", "w") as fh:
        json.dump(tree, fh)


def load_state(path_prefix: str, device: torch.device | str | None = None) -> Any:
    """Inverse of [`save_state`]."""
    from safetensors.torch import load_file

    for ext in (".safetensors", ".json"):
        if not os.path.isfile(path_prefix + ext):
            raise ValueError(f"Missing state file {path_prefix + ext}; was the checkpoint written by this trainer?")
    # safetensors takes "cpu" or "cuda:N" but refuses "cpu:0" (what `args.device` is on a CPU rank under torchrun)
    device = torch.device(device if device is not None else "cpu")
    tensors = load_file(f"{path_prefix}.safetensors", device="cpu" if device.type == "cpu" else str(device))
    with open(f"{path_prefix}.json", encoding="utf-8") as fh:
        tree = json.load(fh)
    return _from_tree(tree, tensors)


def state_exists(path_prefix: str) -> bool:
    return os.path.isfile(f"{path_prefix}.safetensors") and os.path.isfile(f"{path_prefix}.json")
