"""Absolute Gradient / Weight Entropy (AGE / AWE), accuracy on the answer token, steps-to-accuracy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch


def absolute_entropy(tensors: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    r"""
    `H(x) = -sum_i |x_i| ln |x_i|` over all entries of `tensors` (concatenated), with `0 ln 0 = 0` (via `xlogy`).

    Applied to gradients this is the Absolute Gradient Entropy (AGE), to weights the Absolute Weight Entropy (AWE).
    It is not scale invariant, `H(cx) = c H(x) - c ln(c) ||x||_1`: compare only equally normalised runs.

    Returns:
        0-dim float64 tensor.
    """
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    total = torch.zeros((), dtype=torch.float64)
    seen = False
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"absolute_entropy expects tensors, got {type(t).__name__}.")
        a = t.detach().abs().to(torch.float64)
        total = total + (-torch.special.xlogy(a, a).sum()).cpu()
        seen = True
    if not seen:
        raise ValueError("absolute_entropy got no tensors.")
    return total


def absolute_gradient_entropy(model: torch.nn.Module) -> float:
    """AGE of the current `.grad` of all trainable parameters of `model`."""
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        raise ValueError("The model has no gradients; call backward() first.")
    return float(absolute_entropy(grads))


def absolute_weight_entropy(model: torch.nn.Module) -> float:
    """AWE of all parameters of `model`."""
    return float(absolute_entropy(list(model.parameters())))


def answer_accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose labelled positions are all predicted correctly (next-token convention)."""
    pred = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    mask = target != -100
    correct = ((pred == target) | ~mask).all(-1)
    return correct.float().mean()


def preprocess_logits_for_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For `Trainer(preprocess_logits_for_metrics=...)`: keep only the argmax ids (saves memory in evaluation)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(-1)


def arithmetic_accuracy(eval_pred) -> dict[str, float]:
    """`compute_metrics` for the arithmetic datasets: exact accuracy of the answer token.

    Expects predictions that are token ids (from [`preprocess_logits_for_accuracy`]) or logits.
    """
    preds, labels = eval_pred.predictions, eval_pred.label_ids
    preds = np.asarray(preds[0] if isinstance(preds, tuple) else preds)
    labels = np.asarray(labels)
    if preds.ndim == labels.ndim + 1:
        preds = preds.argmax(-1)
    pred, target = preds[:, :-1], labels[:, 1:]
    mask = target != -100
    correct = ((pred == target) | ~mask).all(-1)
    return {"accuracy": float(correct.mean())}


def steps_to_accuracy(steps: Sequence[int], accuracies: Sequence[float], target: float = 0.95) -> int | None:
    """First step at which `accuracies` reaches `target` (None if never)."""
    if len(steps) != len(accuracies):
        raise ValueError("steps and accuracies must have the same length.")
    for step, acc in zip(steps, accuracies):
        if acc >= target:
            return int(step)
    return None
