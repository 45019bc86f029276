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
