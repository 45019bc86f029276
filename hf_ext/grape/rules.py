"""Mixture update rules as pure functions on weight vectors (no model, no Trainer).

All weights are 1-D tensors on the probability simplex. Updates are exponentiated-gradient (mirror descent) steps:
``w <- softmax(log w + step * score)``, optionally followed by smoothing towards uniform
``w <- (1 - eps) * w + eps / len(w)``.

GRAPE (Fan, Glarou, Jaggi, 2025) alternates two steps:

* task weights ``z`` (group DRO over target tasks): ``log z_n <- log z_n - mu_tgt * <h_n, g_alpha>`` where ``g_alpha``
  is the gradient of the training-mixture loss and ``h_n`` the gradient of task ``n``'s log-loss (a first-order
  estimate of its rate of improvement). Tasks that improve fast lose weight.
* domain weights ``alpha``: ``log alpha_k <- log alpha_k + mu_train * <g_k, g_tgt>`` where ``g_tgt`` is the gradient
  of the ``z``-weighted target objective. Domains whose gradient is aligned with it gain weight.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..utils.checks import is_real
from .state import is_weight_number

GRAPE_VARIANTS = ("grape", "grape_ema", "grape_gap")
STEP_SIZE_CONVENTIONS = ("absolute", "lr_scaled")


def _real_vector(values, name: str) -> torch.Tensor:
    """`values` as a float64 tensor, refused with a `TypeError` naming `name` unless it holds real numbers: bools
    (`[True, False]` was read as `[1, 0]`), complex numbers (their imaginary part was dropped with a warning), strings
    and `None` (a bare `new(): invalid data type 'str'` or `must be real number, not NoneType` naming nothing)."""
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.is_complex():
            raise TypeError(f"{name} must hold real numbers, got a {values.dtype} tensor.")
        return values.detach().to("cpu", torch.float64)
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold real numbers, got an array of dtype {values.dtype}.")
        return torch.from_numpy(values.astype(np.float64))
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a 1-D sequence of real numbers, got {values!r:.80}.")
    items = list(values)
    for value in items:
        nested = isinstance(value, (list, tuple, np.ndarray, torch.Tensor)) and np.ndim(value) > 0
        if not (nested or is_weight_number(value)):  # a nested row is refused by its shape below
            raise TypeError(
                f"{name} must hold real numbers (not bools, strings or None), got {value!r} in {items!r:.80}."
            )
    if not any(isinstance(v, (list, tuple, np.ndarray, torch.Tensor)) and np.ndim(v) > 0 for v in items):
        # numbers one by one: torch.as_tensor on a list of 0-d numpy arrays failed with a bare "len() of unsized object"
        return torch.tensor(
            [float(v.detach() if isinstance(v, torch.Tensor) else v) for v in items], dtype=torch.float64
        )
    try:
        return torch.as_tensor(items, dtype=torch.float64)  # nested rows: refused by their shape by the caller
    except (TypeError, ValueError, RuntimeError) as err:  # ragged rows, or rows mixed with numbers
        raise ValueError(
            f"{name} must be a 1-D vector of real numbers, got ragged or nested values {items!r:.80}."
        ) from err


def _as_weights(weights, name: str) -> torch.Tensor:
    w = _real_vector(weights, name)
    if w.dim() != 1 or w.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector of weights, got shape {tuple(w.shape)}.")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{name} must hold finite non-negative weights with a positive sum, got {w.tolist()}.")
    # scaled by the largest weight first: the sum of weights near the float64 maximum (e.g. [1e308, 1e308]) overflowed
    # to inf, every weight became 0 and the step returned NaN
    w = w / w.max()
    return w / w.sum()


def _as_scores(scores, n: int, name: str) -> torch.Tensor:
    s = _real_vector(scores, name)
    if s.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the weights, got {tuple(s.shape)}.")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite, got {s.tolist()}.")
    return s


def _real(value, name: str) -> float:
    """`value` as a float if it is a real number (numpy's, or a 0-d real tensor or numpy array, too), else a
    `TypeError` naming `name` (None or a string used to fail inside a comparison or `math.isfinite`, naming neither).
    A 0-d numpy array (e.g. `tensor.numpy()` of a 0-d tensor) is a number here as in the weight vectors: it used to be
    refused as "must be a real number, got array(1.)" while the 0-d tensor it came from was taken."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool and not value.is_complex():
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        return float(value)
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r}.")
    return float(value)


def _check_smoothing(smoothing: float, name: str = "smoothing") -> None:
    if not 0.0 <= _real(smoothing, name) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {smoothing}.")


def smooth_weights(weights, smoothing: float) -> torch.Tensor:
    """Mix `weights` with the uniform distribution: ``(1 - smoothing) * w + smoothing / len(w)``."""
    _check_smoothing(smoothing)
    w = _as_weights(weights, "weights")
    return (1.0 - smoothing) * w + smoothing / w.numel()


def exponentiated_step(weights, scores, step_size: float, smoothing: float = 0.0) -> torch.Tensor:
    """One mirror-descent step on the simplex: ``softmax(log w + step_size * scores)``, then smoothing.

    Args:
        weights (`torch.Tensor` or sequence of `float`): Current weights (normalised internally).
        scores (`torch.Tensor` or sequence of `float`): One score per weight; positive scores raise the weight.
        step_size (`float`): Non-negative step.
        smoothing (`float`, *optional*, defaults to 0.0): Mixing coefficient with the uniform distribution.

    Returns:
        `torch.Tensor` (float64) on the simplex. Zero weights stay zero unless `smoothing > 0`. A step so large that
        `step_size * scores` overflows float64 gives its limit: all weight on the top-scoring non-zero weights (in their
        ratio), not NaN.
    """
    w = _as_weights(weights, "weights")
    s = _as_scores(scores, w.numel(), "scores")
    step_size = _real(step_size, "step_size")
    if not math.isfinite(step_size) or step_size < 0:
        raise ValueError(f"step_size must be a finite non-negative number, got {step_size}.")
    _check_smoothing(smoothing)
    if step_size == 0:  # softmax(log w) is w (up to rounding)
        new = w
    else:
        live = w > 0
        # The step is taken relative to the largest score of a non-zero weight (a softmax is unchanged by a shift), so
        # it is at most 0. Unshifted, `step_size * scores` could overflow float64 (a huge step: `inf - inf` was NaN in
        # the softmax), and a large step rounded `log w` away next to it (equal scores, which must leave the weights
        # as they are, moved them by 6.5e-7 at step_size=1e8, scores 1197). A zero weight stays zero (its log is -inf).
        shifted = step_size * (s - s[live].max())
        logits = torch.where(live, torch.log(w) + shifted, torch.full_like(w, -math.inf))
        new = torch.softmax(logits, dim=0)
    return (1.0 - smoothing) * new + smoothing / new.numel()


def resolve_step_size(mu: float, convention: str = "absolute", learning_rate: float | None = None) -> float:
    """Turn a configured `mu` into the step actually applied.

    Args:
        mu (`float`): The configured value.
        convention (`str`, *optional*, defaults to `"absolute"`):
            `"absolute"`: the step is `mu` (GRAPE code). `"lr_scaled"`: the step is `learning_rate / mu`, i.e. `mu`
            is an inverse step multiplied by the current learning rate (older MAP/DoGE code).
        learning_rate (`float`, *optional*): Current learning rate; required for `"lr_scaled"`.
    """
    if convention not in STEP_SIZE_CONVENTIONS:
        raise ValueError(f"convention must be one of {STEP_SIZE_CONVENTIONS}, got {convention!r}.")
    if not math.isfinite(_real(mu, "mu")) or mu < 0:
        raise ValueError(f"mu must be a finite non-negative number, got {mu}.")
    if convention == "absolute":
        return float(mu)
    if learning_rate is None or not math.isfinite(_real(learning_rate, "learning_rate")) or learning_rate < 0:
        raise ValueError(
            f"convention='lr_scaled' needs the current learning_rate, a finite number >= 0, got {learning_rate!r}."
        )
    if mu == 0:
        raise ValueError("convention='lr_scaled' divides the learning rate by mu; mu must be > 0.")
    return float(learning_rate) / float(mu)


def grape_task_weights(task_weights, improvement_scores, step_size: float, smoothing: float = 1e-3) -> torch.Tensor:
    """GRAPE task-weight (group-DRO) step: ``z <- softmax(log z - step * r)``, then smoothing.

    Args:
        task_weights: Current task weights `z` (N,).
        improvement_scores: Estimated rate of improvement per task, `r_n = <h_n, g_alpha>` (N,). A task that improves
            faster than the others loses weight.
        step_size (`float`): `mu_tgt` (after `resolve_step_size`).
        smoothing (`float`, *optional*, defaults to 1e-3): Smoothing towards uniform (the GRAPE code hard-codes 1e-3).
    """
    r = _as_scores(improvement_scores, _as_weights(task_weights, "task_weights").numel(), "improvement_scores")
    return exponentiated_step(task_weights, -r, step_size, smoothing)


def grape_domain_weights(domain_weights, alignment_scores, step_size: float, smoothing: float = 0.0) -> torch.Tensor:
    """GRAPE domain-weight step: ``alpha <- softmax(log alpha + step * <g_k, g_tgt>)``, then smoothing.

    Args:
        domain_weights: Current domain weights `alpha` (K,).
        alignment_scores: `<g_k, g_tgt>` per source domain (K,). Domains aligned with the target gradient gain weight.
        step_size (`float`): `mu_train` (after `resolve_step_size`).
        smoothing (`float`, *optional*, defaults to 0.0): The GRAPE code applies none to domain weights.
    """
    return exponentiated_step(domain_weights, alignment_scores, step_size, smoothing)


def task_objective(loss: torch.Tensor, variant: str = "grape", ema_loss: float | None = None) -> torch.Tensor:
    """The scalar whose gradient is the task direction `h_n` for a GRAPE variant.

    `"grape"`: `log(loss)` (so the gradient is `grad(loss) / loss`); `"grape_ema"`: `loss / ema_loss` (gradient
    normalised by the running loss average); `"grape_gap"`: `loss` itself.
    """
    if variant not in GRAPE_VARIANTS:
        raise ValueError(f"variant must be one of {GRAPE_VARIANTS}, got {variant!r}.")
    if variant == "grape":
        return torch.log(loss)
    if variant == "grape_ema":
        if ema_loss is None or not _real(ema_loss, "ema_loss") > 0:
            raise ValueError(f"variant='grape_ema' needs a positive ema_loss, got {ema_loss}.")
        return loss / _real(ema_loss, "ema_loss")  # a number: a 0-d numpy array would turn the loss into numpy
    return loss


def ema_update(previous: float | None, value: float, beta: float) -> float:
    """Exponential moving average; the first value (``previous`` is None or NaN) initialises it."""
    if not 0.0 <= _real(beta, "beta") < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}.")
    value = _real(value, "value")
    if previous is None or math.isnan(_real(previous, "previous")):
        return float(value)
    return float(beta * previous + (1.0 - beta) * value)


def doge_domain_weights(
    domain_weights,
    alignment_scores,
    domain_grad_norms,
    learning_rate: float,
    mu: float = 0.01,
    score_min: float = 0.0,
    score_max: float = 5.0,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """The original DoGE domain-weight step (Fan, Pagliardini, Jaggi, 2024), as the `Olivia-fsm/DoGE` code does it.

    ``score_k = lr * <g_k, g_tgt> / mean_j ||g_j||``, clipped to ``[lr * score_min, lr * score_max]``, then
    ``alpha <- softmax(log alpha + score / mu)`` and smoothing. The original applies it at *every* optimizer step
    (with `mu=0.01` and the proxy model trained on the alpha-weighted gradient); at a cadence of one update per 100
    steps it barely moves (at most `score_max * lr / mu` in log weight per update). It is provided as a rule for
    experiments; `GrapeTrainer(reweight_method="doge")` runs the GRAPE repository's DoGE baseline instead
    (`grape_domain_weights` with fixed task weights).

    Args:
        domain_weights: Current `alpha` (K,).
        alignment_scores: `<g_k, g_tgt>` per domain (K,).
        domain_grad_norms: `||g_k||` per domain (K,), used to normalise the scores.
        learning_rate (`float`): Current learning rate of the model being trained.
        mu (`float`, *optional*, defaults to 0.01): Inverse step size (Bregman coefficient; DoGE's `config/doge.json`).
        score_min, score_max (`float`): Clip bounds in units of the learning rate; `-math.inf` / `math.inf` turn
            that side of the clip off.
        smoothing (`float`, *optional*, defaults to 0.0): Smoothing towards uniform.
    """
    w = _as_weights(domain_weights, "domain_weights")
    s = _as_scores(alignment_scores, w.numel(), "alignment_scores")
    norms = _as_scores(domain_grad_norms, w.numel(), "domain_grad_norms")
    if (norms < 0).any():  # a negative mean norm flipped the sign of every score (the step went the other way)
        raise ValueError(f"domain_grad_norms must be non-negative (gradient norms), got {norms.tolist()}.")
    if not _real(mu, "mu") > 0:
        raise ValueError(f"mu must be > 0 (it divides the scores), got {mu}.")
    for name, value in (("score_min", score_min), ("score_max", score_max)):
        if math.isnan(_real(value, name)):
            raise ValueError(
                f"{name} must be a number (a clip bound in units of the learning rate; +-inf: no bound), got {value}."
            )
    score_min, score_max = float(score_min), float(score_max)
    if score_min > score_max:
        raise ValueError(f"score_min ({score_min}) must not exceed score_max ({score_max}).")
    if not 0 <= _real(learning_rate, "learning_rate") < math.inf:
        raise ValueError(f"learning_rate must be a finite number >= 0, got {learning_rate}.")
    learning_rate = float(learning_rate)
    scores = learning_rate * s / (norms.mean() + 1e-6)
    if learning_rate > 0:  # at 0 every score is 0 (and 0 * inf, an infinite bound, would be NaN)
        scores = scores.clamp(min=learning_rate * score_min, max=learning_rate * score_max)
    return exponentiated_step(w, scores, 1.0 / mu, smoothing)


def doremi_excess_loss(proxy_token_losses, reference_token_losses, mask=None) -> torch.Tensor:
    """DoReMi per-token excess loss ``max(l_proxy - l_ref, 0)`` averaged over the unmasked tokens (a scalar)."""
    p = torch.as_tensor(proxy_token_losses, dtype=torch.float64)
    r = torch.as_tensor(reference_token_losses, dtype=torch.float64)
    if p.shape != r.shape:
        raise ValueError(f"proxy and reference token losses must have the same shape, got {p.shape} and {r.shape}.")
    excess = (p - r).clamp(min=0.0)
    if mask is None:
        return excess.mean()
    m = torch.as_tensor(mask, dtype=torch.float64)
    if m.shape != p.shape:
        raise ValueError(f"mask must have the shape of the token losses {tuple(p.shape)}, got {tuple(m.shape)}.")
    return (excess * m).sum() / m.sum().clamp(min=1.0)


def doremi_domain_weights(domain_weights, excess_losses, eta: float = 1.0, smoothing: float = 1e-4) -> torch.Tensor:
    """DoReMi domain-weight step: ``alpha <- softmax(log alpha + eta * lambda)``, then smoothing.

    Args:
        domain_weights: Current `alpha` (K,).
        excess_losses: Per-domain excess loss `lambda_k` of the proxy over the reference model (K,).
        eta (`float`, *optional*, defaults to 1.0): Step size (DoReMi code default).
        smoothing (`float`, *optional*, defaults to 1e-4): Smoothing towards uniform (DoReMi code default).
    """
    if not 0 <= _real(eta, "eta") < math.inf:
        raise ValueError(f"eta must be a finite non-negative number (the step size), got {eta}.")
    return exponentiated_step(domain_weights, excess_losses, eta, smoothing)
