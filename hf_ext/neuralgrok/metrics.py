"""Absolute Gradient / Weight Entropy (AGE / AWE), accuracy on the answer token, steps-to-accuracy."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..utils.checks import is_real, python_scalar
from ..utils.distributed import is_dtensor


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
        part = -torch.special.xlogy(a, a).sum()
        if is_dtensor(part):  # a sharded DTensor (FSDP2): the sum over all shards
            part = part.full_tensor()
        total = total + part.cpu()
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


def weight_norm(model: torch.nn.Module) -> float:
    """Global l2 norm of all parameters of `model` (the weight norm the grokking literature tracks)."""
    norms = [p.detach().float().norm() for p in model.parameters()]
    if not norms:
        raise ValueError("The model has no parameters.")
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def _answer_correct_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row (bool): are all its labelled positions predicted correctly (next-token convention)."""
    pred = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    mask = target != -100
    return ((pred == target) | ~mask).all(-1)


def answer_accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose labelled positions are all predicted correctly (next-token convention)."""
    return _answer_correct_rows(logits, labels).float().mean()


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
    if labels.ndim != 2 or preds.shape != labels.shape:
        # one label per row (a classifier's) failed with "IndexError: too many indices for array"; predictions of
        # another shape with a numpy broadcasting error
        raise ValueError(
            f"arithmetic_accuracy expects token labels of shape (rows, sequence) and predictions of that shape (token "
            f"ids) or with a vocabulary axis (logits); got labels {labels.shape} and predictions "
            f"{np.shape(eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions)}."
        )
    pred, target = preds[:, :-1], labels[:, 1:]
    mask = target != -100
    correct = ((pred == target) | ~mask).all(-1)
    return {"accuracy": float(correct.mean())}


def steps_to_accuracy(steps: Sequence[int], accuracies: Sequence[float], target: float = 0.95) -> int | None:
    """First step at which `accuracies` reaches `target` (None if never); `target` is an accuracy in (0, 1]."""
    target = python_scalar(target)  # numpy numbers and 0-d tensors too
    if not is_real(target) or not 0.0 < target <= 1.0:
        raise ValueError(f"target={target!r} must be in (0, 1] (an accuracy; above 1 it is never reached).")
    if len(steps) != len(accuracies):
        raise ValueError("steps and accuracies must have the same length.")
    for step, acc in zip(steps, accuracies):
        if acc >= target:
            return int(step)
    return None


def stability_after_target(
    eval_steps: Sequence[int],
    test_accuracy: Sequence[float],
    train_steps: Sequence[int] = (),
    train_loss: Sequence[float] = (),
    target: float = 0.95,
    drop_margin: float = 0.1,
    spike_factor: float = 10.0,
    spike_floor: float = 0.05,
) -> dict:
    r"""
    How stable training is once test accuracy has first reached `target` (the post-grokking oscillations the NeuralGrok
    paper reports for standard training with weight decay).

    - `accuracy_drops`: episodes in which test accuracy falls below `target - drop_margin` after first reaching
      `target` (each fall counts once, however long it lasts);
    - `min_test_accuracy_after_target`, `fraction_evals_below`: the worst test accuracy after the target step, and
      the fraction of those evaluations below `target - drop_margin`;
    - `loss_spikes`: episodes in which the logged training loss rises above
      `max(spike_factor * running minimum since the target step, spike_floor)`;
    - `max_train_loss_after_target`.

    `drop_margin` and `spike_floor` must be finite numbers >= 0, `spike_factor` a finite number > 0.

    Returns a dict with these keys and `reached` (all values `None` when the target is never reached).
    """
    if len(eval_steps) != len(test_accuracy) or len(train_steps) != len(train_loss):
        raise ValueError("steps and values must have the same length (eval_steps/test_accuracy, train_steps/loss).")
    target = python_scalar(target)  # numpy numbers and 0-d tensors too
    if not is_real(target) or not 0.0 < target <= 1.0:
        # a string or None failed with "'<' not supported between instances of 'float' and 'str'"
        raise ValueError(f"target={target!r} must be a number in (0, 1] (an accuracy), e.g. 0.95.")
    # a negative margin counted every evaluation as a drop, a NaN factor never counted a spike
    bounds = {"drop_margin": (drop_margin, 0.0, True), "spike_factor": (spike_factor, 0.0, False)}
    bounds["spike_floor"] = (spike_floor, 0.0, True)
    for name, (value, low, inclusive) in bounds.items():
        if not is_real(value) or not math.isfinite(value) or not (value >= low if inclusive else value > low):
            raise ValueError(f"{name}={value!r} must be a finite number {'>=' if inclusive else '>'} {low:g}.")
    first = steps_to_accuracy(eval_steps, test_accuracy, target)
    out = {
        "reached": first is not None,
        "accuracy_drops": None,
        "min_test_accuracy_after_target": None,
        "fraction_evals_below": None,
        "loss_spikes": None,
        "max_train_loss_after_target": None,
    }
    if first is None:
        return out
    threshold = target - drop_margin
    after = [a for s, a in zip(eval_steps, test_accuracy) if s >= first]
    drops, below = 0, False
    for acc in after:
        if acc < threshold and not below:
            drops += 1
        below = acc < threshold
    out["accuracy_drops"] = drops
    out["min_test_accuracy_after_target"] = float(min(after))
    out["fraction_evals_below"] = float(sum(a < threshold for a in after) / len(after))
    losses = [float(v) for s, v in zip(train_steps, train_loss) if s >= first and v is not None]
    if losses:
        spikes, in_spike, running_min = 0, False, losses[0]
        for value in losses:
            spiking = value > max(spike_factor * running_min, spike_floor)
            if spiking and not in_spike:
                spikes += 1
            in_spike = spiking
            running_min = min(running_min, value)
        out["loss_spikes"] = spikes
        out["max_train_loss_after_target"] = max(losses)
    return out
