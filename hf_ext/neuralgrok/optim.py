"""Gradient-transform optimizer wrappers: NeuralGrok (amplify, clip, step) and Grokfast (EMA / MA filters).

Each wrapper rewrites `param.grad` exactly once per optimizer step, inside `step()`, then delegates to the wrapped
("inner") optimizer. Under gradient accumulation the transform therefore sees the accumulated gradient once, never a
micro-batch gradient.
"""

from __future__ import annotations

import math
import numbers
from collections import deque

import torch
from torch.optim import Optimizer

from ..utils.checks import is_bool, is_real
from ..utils.distributed import is_dtensor
from .amplifier import NeuralAmplifier, _norm_floor, _positive_finite
from .metrics import absolute_entropy


def _check_clip_norm(clip_norm) -> None:
    if clip_norm is not None and (
        isinstance(clip_norm, bool) or not isinstance(clip_norm, numbers.Real) or not clip_norm >= 0
    ):
        raise ValueError(f"clip_norm={clip_norm!r} must be a number >= 0 (0 or None disables clipping).")


class GradientTransformOptimizer(Optimizer):
    """
    Wraps `inner` and runs `transform_gradients()` (identity here) once per `step()` before `inner.step()`.

    It shares `param_groups` and `state` with `inner`, so learning-rate schedulers and `inner`'s own
    `state_dict()` behave as usual. `last_metrics` holds gradient statistics of the last step: `age_raw` (absolute
    gradient entropy of the gradient as computed by backward), `grad_norm_raw`, and for transforming subclasses
    `age_transformed` / `grad_norm_transformed` (after the transform, before any clipping). Each step only copies the
    gradients into one reused buffer per statistic (raw, transformed); the statistics are computed from that copy
    when `last_metrics` is read, so a run that logs every N steps pays for them once per log, not once per step.

    Args:
        inner (`torch.optim.Optimizer`): the base optimizer (e.g. AdamW).
        track_entropy (`bool`, *optional*, defaults to `True`): record the AGE statistics (at the memory cost of one
            or two gradient-sized buffers).
    """

    def __init__(self, inner: Optimizer, track_entropy: bool = True):
        if not isinstance(inner, Optimizer):
            raise TypeError(f"inner must be a torch.optim.Optimizer, got {type(inner).__name__}.")
        if not is_bool(track_entropy):
            raise ValueError(f"track_entropy={track_entropy!r} must be a bool (True or False).")
        if isinstance(inner, GradientTransformOptimizer):
            raise TypeError("inner is already a gradient-transform wrapper; wrap the base optimizer only once.")
        self.inner = inner
        self.track_entropy = track_entropy
        # Called as `before_transform(params)` in `step()` while `p.grad` still holds the raw gradient (NeuralGrokTrainer
        # runs the `outer_gradient="next_step"` amplifier update here); it must not modify the gradients.
        self.before_transform = None
        self.num_transforms = 0
        self.last_lr: float | None = None
        self._metrics: dict[str, float] = {}
        self._snapshots: dict[str, list[torch.Tensor]] = {}
        self._pending: set[str] = set()
        super().__init__(inner.param_groups, inner.defaults)
        self.param_groups = inner.param_groups
        self.state = inner.state

    def _params_with_grad(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def transform_gradients(self, params: list[torch.Tensor]) -> None:
        """Rewrite `p.grad` for `params` in place (identity in the base class)."""

    def _grad_stats(self, params: list[torch.Tensor], suffix: str) -> None:
        """Copy the current gradients of `params` for the `suffix` statistics (computed lazily in `last_metrics`)."""
        if not self.track_entropy or not params:
            return
        grads = [p.grad for p in params]
        buffers = self._snapshots.get(suffix)
        if (
            buffers is None
            or len(buffers) != len(grads)
            or any(b.shape != g.shape or b.dtype != g.dtype or b.device != g.device for b, g in zip(buffers, grads))
        ):
            buffers = self._snapshots[suffix] = [
                torch.empty_like(g, memory_format=torch.contiguous_format) for g in grads
            ]
        for buffer, grad in zip(buffers, grads):
            buffer.copy_(grad)
        self._pending.add(suffix)

    @property
    def last_metrics(self) -> dict[str, float]:
        """Gradient statistics of the last step (see the class docstring); computed here from the step's copies."""
        for suffix in sorted(self._pending):
            grads = self._snapshots[suffix]
            self._metrics[f"age_{suffix}"] = float(absolute_entropy(grads))
            # in float64, as the entropy: a bf16 / fp16 gradient's norm came back in its own dtype, rounded to ~3
            # significant digits (the logged norm of a bf16 model's transformed gradient, sqrt(29) = 5.385, read 5.375)
            self._metrics[f"grad_norm_{suffix}"] = float(
                torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads])
                )
            )
        self._pending.clear()
        return self._metrics

    def post_transform(self, params: list[torch.Tensor]) -> None:
        """Hook between the transform and `inner.step()` (clipping in [`NeuralGrokOptimizer`])."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params_with_grad()
        self.last_lr = float(self.param_groups[0]["lr"])
        self._grad_stats(params, "raw")
        if self.before_transform is not None:
            self.before_transform(params)
        self.transform_gradients(params)
        self.num_transforms += 1
        if type(self).transform_gradients is not GradientTransformOptimizer.transform_gradients:
            self._grad_stats(params, "transformed")
        self.post_transform(params)
        self.inner.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------ state
    def extra_state_dict(self, full_tensors: bool = True) -> dict:
        """State of the transform itself (filter buffers, counters); tensors and JSON-able values only.

        With `full_tensors=True` (what NeuralGrokTrainer's checkpoints hold) a buffer sharded like its parameter
        (a DTensor under FSDP2) is gathered into the whole tensor, the same on every rank: a collective, so every
        rank must call this method. With `full_tensors=False` buffers are returned as they are (DTensor shards, as a
        torch optimizer's own `state_dict()` holds them); no communication."""
        return {"num_transforms": self.num_transforms}

    def load_extra_state_dict(self, state: dict) -> None:
        self.num_transforms = int(state.get("num_transforms", 0))

    def state_dict(self) -> dict:
        out = self.inner.state_dict()
        # no collective here: callers may ask one rank only, and torch.distributed.checkpoint keeps its own layout
        out["gradient_transform"] = self.extra_state_dict(full_tensors=False)
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("gradient_transform", None)
        self.inner.load_state_dict(state_dict)
        # inner.load_state_dict rebuilds its param_groups list and state dict: re-share them.
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        if extra is not None:
            self.load_extra_state_dict(extra)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


class NeuralGrokOptimizer(GradientTransformOptimizer):
    """
    NeuralGrok inner step: transform every gradient with the amplifier (no autograd graph is kept), clip the global
    norm to `clip_norm`, then step the base optimizer. Set `TrainingArguments.max_grad_norm=0` when using it under
    a `Trainer`, otherwise the raw gradient is clipped before the transform.

    Args:
        inner (`torch.optim.Optimizer`): the base optimizer.
        amplifier ([`NeuralAmplifier`]): the learned transform (trained separately by the outer step).
        clip_norm (`float` or `None`, *optional*, defaults to 1.0): global-norm clip after the transform (`None` or
            0 disables it).
        track_entropy (`bool`, *optional*, defaults to `True`): record AGE of raw and transformed gradients.
    """

    def __init__(
        self,
        inner: Optimizer,
        amplifier: NeuralAmplifier,
        clip_norm: float | None = 1.0,
        track_entropy: bool = True,
    ):
        if not isinstance(amplifier, NeuralAmplifier):
            raise TypeError(f"amplifier must be a NeuralAmplifier, got {type(amplifier).__name__}.")
        _check_clip_norm(clip_norm)
        self.amplifier = amplifier
        self.clip_norm = clip_norm
        super().__init__(inner, track_entropy=track_entropy)

    def transform_gradients(self, params: list[torch.Tensor]) -> None:
        was_training = self.amplifier.training
        self.amplifier.eval()
        self.amplifier.transform_(params)
        self.amplifier.train(was_training)

    def post_transform(self, params: list[torch.Tensor]) -> None:
        if self.clip_norm and params:
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)


class GradNormOptimizer(GradientTransformOptimizer):
    """
    The normalisation-only control of NeuralGrok: every gradient tensor is rescaled to norm `c` (`g <- c g / ||g||`),
    the global norm is clipped to `clip_norm`, then the base optimizer steps. This is exactly
    [`NeuralGrokOptimizer`] with the amplifier's output fixed to the uniform distribution (`p = 1/n` for every entry
    of a tensor): same scale, same clipping, no learned re-weighting. The difference between the two isolates what
    the learned amplifier adds.

    Args:
        inner (`torch.optim.Optimizer`): the base optimizer.
        c (`float`, *optional*, defaults to 1.0): norm of each rescaled gradient tensor.
        clip_norm (`float` or `None`, *optional*, defaults to 1.0): global-norm clip after the rescaling (`None` or
            0 disables it).
        eps (`float`, *optional*, defaults to 1e-30): floor of `||g||` (an all-zero gradient stays zero).
        track_entropy (`bool`, *optional*, defaults to `True`): record AGE of raw and rescaled gradients.
    """

    def __init__(
        self,
        inner: Optimizer,
        c: float = 1.0,
        clip_norm: float | None = 1.0,
        eps: float = 1e-30,
        track_entropy: bool = True,
    ):
        if not _positive_finite(c):
            raise ValueError(f"c={c!r} must be a finite number > 0 (the norm of each rescaled gradient tensor).")
        if not _positive_finite(eps):
            raise ValueError(
                f"eps={eps!r} must be a finite number > 0 (the floor of ||g||; with 0 an all-zero gradient tensor "
                "becomes 0/0 = NaN), e.g. the default 1e-30."
            )
        _check_clip_norm(clip_norm)
        self.c = float(c)
        self.clip_norm = clip_norm
        self.eps = eps
        super().__init__(inner, track_entropy=track_entropy)

    def transform_gradients(self, params: list[torch.Tensor]) -> None:
        for p in params:
            grad = p.grad if p.grad.dtype == torch.float64 else p.grad.float()
            norm = _norm_floor(grad, self.eps)
            # the scale applied in float32 / float64, then rounded once per entry: a bf16 gradient multiplied by the
            # scale rounded to bf16 came out up to 0.3% off norm c (the amplifier's transform: 0.1%)
            p.grad.copy_(grad * (self.c / norm))

    def post_transform(self, params: list[torch.Tensor]) -> None:
        if self.clip_norm and params:
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)


def _filter_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a Grokfast EMA of gradients of `dtype`: float32 for bf16 / fp16 (in bf16 the update
    `mu <- alpha mu + (1 - alpha) g` rounds back to `mu` whenever `(1 - alpha)|g - mu|` is below half a bf16 spacing of
    `mu`: at alpha 0.98 the EMA of a constant 1.5 started at 1.0 stopped at 1.375), else `dtype`."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


class GradFilterOptimizer(GradientTransformOptimizer):
    r"""
    Grokfast gradient filters (Lee et al., 2024) as an optimizer wrapper, applied once per optimizer step.

    - `mode="ema"`: `mu = alpha * mu + (1 - alpha) * g` (mu starts at the first gradient), `g <- g + lamb * mu`; `mu`
      is kept in float32 for bf16 / fp16 gradients (the product `lamb * mu` is added to `g` in its own dtype). Memory:
      one copy of every gradient (float32 for bf16 / fp16 gradients: twice their size).
    - `mode="ma"`: `g <- g + lamb * mean(last window gradients)`; with `warmup=True` the filter is off until the
      window is full. Memory: `window` copies of every gradient.

    Args:
        inner (`torch.optim.Optimizer`): the base optimizer.
        mode (`str`, *optional*, defaults to `"ema"`): `"ema"` or `"ma"`.
        alpha (`float`, *optional*, defaults to 0.98): EMA momentum.
        lamb (`float`, *optional*, defaults to 2.0): amplification of the slow component (5.0 is the MA default).
        window (`int`, *optional*, defaults to 100): MA window.
        warmup (`bool`, *optional*, defaults to `True`): MA only, wait for a full window.
        track_entropy (`bool`, *optional*, defaults to `True`): record AGE of raw and filtered gradients.
    """

    def __init__(
        self,
        inner: Optimizer,
        mode: str = "ema",
        alpha: float = 0.98,
        lamb: float = 2.0,
        window: int = 100,
        warmup: bool = True,
        track_entropy: bool = True,
    ):
        if mode not in ("ema", "ma"):
            raise ValueError(f"mode={mode!r} must be 'ema' or 'ma'.")
        if not is_real(alpha) or not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha={alpha!r} must be a number in [0, 1).")
        if not is_bool(warmup):
            raise ValueError(
                f"warmup={warmup!r} must be a bool (True: the MA filter waits for a full window); a string such as "
                "'false' would count as True."
            )
        if isinstance(lamb, bool) or not isinstance(lamb, numbers.Real) or not math.isfinite(lamb):
            raise ValueError(f"lamb={lamb!r} must be a finite number (the amplification of the slow component).")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r} must be a positive int.")
        self.mode = mode
        self.alpha = float(alpha)
        self.lamb = float(lamb)
        self.window = window
        self.warmup = warmup
        super().__init__(inner, track_entropy=track_entropy)
        self._ema: dict[int, torch.Tensor] = {}
        self._queues: dict[int, deque] = {}

    def _indexed_params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def transform_gradients(self, params: list[torch.Tensor]) -> None:
        with_grad = {id(p) for p in params}
        for index, p in enumerate(self._indexed_params()):
            if id(p) not in with_grad:
                continue
            grad = p.grad
            if self.mode == "ema":
                mu = self._ema.get(index)
                if mu is None:
                    mu = grad.detach().to(_filter_dtype(grad.dtype), copy=True)
                else:
                    mu.mul_(self.alpha).add_(grad, alpha=1.0 - self.alpha)
                self._ema[index] = mu
                grad.add_(mu, alpha=self.lamb)
            else:
                queue = self._queues.setdefault(index, deque(maxlen=self.window))
                queue.append(grad.detach().clone())
                if not self.warmup or len(queue) == self.window:
                    grad.add_(torch.stack(tuple(queue)).mean(0), alpha=self.lamb)

    def extra_state_dict(self, full_tensors: bool = True) -> dict:
        out = super().extra_state_dict(full_tensors)

        def whole(t: torch.Tensor) -> torch.Tensor:
            # every rank gathers the same buffers in the same (index) order: the collectives pair up
            return t.full_tensor() if full_tensors and is_dtensor(t) else t

        out["mode"] = self.mode
        if self.mode == "ema":
            out["ema"] = {str(i): whole(self._ema[i]) for i in sorted(self._ema)}
        else:
            out["queues"] = {
                str(i): torch.stack([whole(t) for t in self._queues[i]])
                for i in sorted(self._queues)
                if self._queues[i]
            }
        return out

    def load_extra_state_dict(self, state: dict) -> None:
        """Restore [`extra_state_dict`]'s output. Whole tensors are re-sharded like their parameter (a DTensor under
        FSDP2: each rank keeps its own slice), so a checkpoint of one world size resumes under another, or in one
        process."""
        super().load_extra_state_dict(state)
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(f"Checkpoint was saved with Grokfast mode={state['mode']!r}, but mode={self.mode!r}.")
        params = self._indexed_params()

        def like(index: str, t: torch.Tensor) -> torch.Tensor:
            i = int(index)
            if not 0 <= i < len(params):
                raise ValueError(
                    f"The Grokfast state holds a buffer for parameter {i}, but the optimizer has {len(params)} "
                    "parameters: it was saved for another model. Resume with the model of the checkpoint."
                )
            p = params[i]
            if is_dtensor(t) and not (
                is_dtensor(p) and t.device_mesh == p.device_mesh and tuple(t.placements) == tuple(p.placements)
            ):
                t = t.full_tensor()  # a shard of another layout: the whole tensor first (a collective)
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"The Grokfast state of parameter {i} has shape {tuple(t.shape)}, but the parameter has shape "
                    f"{tuple(p.shape)}: it was saved for another model. Resume with the model of the checkpoint."
                )
            if is_dtensor(p) and not is_dtensor(t):
                from torch.distributed.tensor import distribute_tensor

                # every rank holds the whole tensor (read from the same file): each keeps its slice, no communication
                return distribute_tensor(t.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            return t.to(p.device).clone()

        if self.mode == "ema":
            # an EMA saved in bf16 / fp16 (before it was kept in float32) goes on in float32
            ema = {int(i): like(i, t) for i, t in state.get("ema", {}).items()}
            self._ema = {i: t.to(_filter_dtype(t.dtype)) for i, t in ema.items()}
        else:
            self._queues = {
                int(i): deque((like(i, t) for t in stacked.unbind(0)), maxlen=self.window)
                for i, stacked in state.get("queues", {}).items()
            }
