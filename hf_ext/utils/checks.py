"""Type predicates and setting checks shared by the argument checks of the optimizers, trainers and estimators."""

from __future__ import annotations

import numbers


def is_real(value) -> bool:
    """`value` is a real number and not a bool (`True` is an int in Python, and would pass for 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value) -> bool:
    """`value` is an integer and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_bool(value) -> bool:
    """`value` is a bool (numpy's `bool_` too); `"false"`, `0` and `None` are not (a string would be truthy)."""
    import numpy

    return isinstance(value, bool | numpy.bool_)


def python_scalar(value):
    """`value` as the Python `bool` / `int` / `float` it holds when `is_bool` / `is_int` / `is_real` accept it (numpy's
    `np.bool_`, `np.int64`, `np.float32` too), or when it is a 0-d real tensor (`torch.tensor(0.25)`, e.g.
    `1 / torch.linalg.matrix_norm(A)`: its `item()`); anything else (None, a str, a list, a tensor with dimensions)
    unchanged, for the caller's check to refuse by name. (`GrokDecoderConfig` and `NeuralGrokConfig` convert to their
    declared types themselves, e.g. an int `amplifier_c` to a float.)"""
    if is_bool(value):
        return bool(value)
    if is_int(value):
        return int(value)
    if is_real(value):
        return float(value)
    import torch

    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        return value.item()
    return value


def store_python_scalars(obj, names=None, base=None) -> None:
    """Replace each attribute `names` of `obj` by `python_scalar` of its value.

    Configs and `TrainingArguments` store what they are given and are saved as JSON (`to_json_string()`, which e.g.
    the TensorBoard callback logs; `save_pretrained`): a numpy number or bool accepted by the checks would make that
    fail. `names` defaults to the dataclass fields of `obj` that the dataclass `base` (e.g. `TrainingArguments`) does
    not have, i.e. a subclass's own options.
    """
    import dataclasses

    if names is None:
        inherited = {f.name for f in dataclasses.fields(base)} if base is not None else set()
        names = [f.name for f in dataclasses.fields(obj) if f.name not in inherited]
    for name in names:
        setattr(obj, name, python_scalar(getattr(obj, name)))


def refuse_optimizer_flags(args, builds: str, optim_fix: str, option_fix: str) -> None:
    """Refuse transformers' optimizer flags that a trainer building its own optimizer would ignore.

    A `--optim` other than `TrainingArguments`' default raises `"--optim X would be ignored: {builds}. {optim_fix}"`;
    a non-empty `--optim_args` / `--optim_target_modules` (they configure only the optimizers `--optim` names)
    raises `"--name V would be ignored: it configures transformers' --optim optimizers, and {builds}. {option_fix}"`.
    """
    from transformers import TrainingArguments

    default = TrainingArguments.__dataclass_fields__["optim"].default
    optim = getattr(args.optim, "value", args.optim)
    if optim != getattr(default, "value", default):
        raise ValueError(f"--optim {optim} would be ignored: {builds}. {optim_fix}")
    for name in ("optim_args", "optim_target_modules"):
        value = getattr(args, name, None)
        if value:
            raise ValueError(
                f"--{name} {value!r} would be ignored: it configures transformers' --optim optimizers, and {builds}. "
                f"{option_fix}"
            )


def reentrant_checkpointing(checkpointing_kwargs: dict | None, model) -> str | None:
    """Where reentrant activation checkpointing is set (the training arguments' `activation_checkpointing_kwargs` /
    `gradient_checkpointing_kwargs`, or `model`'s own checkpointing), or `None`. Reentrant checkpoints do not support
    `torch.autograd.grad`, which GrapeTrainer's per-domain gradients and NeuralGrok's outer step take."""
    import torch

    def is_true(value) -> bool:
        return value is True or (isinstance(value, str) and value.strip().lower() == "true")

    if isinstance(checkpointing_kwargs, dict) and is_true(checkpointing_kwargs.get("use_reentrant")):
        return "gradient_checkpointing_kwargs={'use_reentrant': True}"
    if isinstance(model, torch.nn.Module):
        for module in model.modules():
            func = getattr(module, "_gradient_checkpointing_func", None)
            if getattr(module, "gradient_checkpointing", False) is True and is_true(
                getattr(func, "keywords", {}).get("use_reentrant")
            ):
                return "the model's gradient checkpointing was enabled with use_reentrant=True"
    return None
