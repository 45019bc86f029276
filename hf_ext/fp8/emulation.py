"""Pure-torch FP8 emulation: the numerics reference for FP8 training, usable on any device.

Every GEMM operand is scaled, cast to a real torch FP8 dtype (E4M3 for activations and weights, E5M2 for gradients in
the HYBRID format) and cast back; the product then runs in FP32, as an FP8 tensor core accumulates. Scales are per
tensor, either from the current tensor ("current" scaling) or from a history of past amaxes (Transformer Engine's
"delayed" scaling).
"""

from __future__ import annotations

import contextlib
import warnings
from numbers import Integral

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
FP8_MAX = {E4M3: float(torch.finfo(E4M3).max), E5M2: float(torch.finfo(E5M2).max)}
FP8_FORMATS = ("hybrid", "e4m3")
SCALINGS = ("current", "delayed")
AMAX_ALGOS = ("max", "most_recent")
_EPS = 1e-12


def fp8_dtypes(fp8_format: str) -> tuple[torch.dtype, torch.dtype]:
    """(forward dtype, gradient dtype) of a format: "hybrid" = (E4M3, E5M2), "e4m3" = (E4M3, E4M3)."""
    if fp8_format not in FP8_FORMATS:
        raise ValueError(f"fp8_format={fp8_format!r} is not supported; choose one of {FP8_FORMATS}.")
    return (E4M3, E5M2) if fp8_format == "hybrid" else (E4M3, E4M3)


_MANTISSA_BITS = {E4M3: 3, E5M2: 2}
_MIN_NORMAL_EXP = {E4M3: -6, E5M2: -14}


def round_to_fp8(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round FP32 values to the nearest `dtype` value (ties to even, saturating), returned in FP32.

    On CUDA this is the hardware cast; on CPU, where torch casts to FP8 one element at a time, the same rounding is
    computed with vectorised ops (exponent, quantum 2**(e - mantissa_bits), round-half-even), which is bit-identical
    to `clamp(x, +-max).to(dtype).float()` (checked in the tests).
    """
    fmax = FP8_MAX[dtype]
    x = x.clamp(-fmax, fmax)
    if x.is_cuda:
        return x.to(dtype).float()
    exponent = torch.floor(torch.log2(x.abs())).clamp_min(_MIN_NORMAL_EXP[dtype])
    quantum = torch.exp2(exponent - _MANTISSA_BITS[dtype])
    return torch.round(x / quantum) * quantum


def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`fp8(clamp(x * scale, +-max)) / scale` in FP32: the value an FP8 GEMM sees for operand `x` with scale `scale`.

    The clamp matters: eager casts to E5M2 do not saturate (1e5 -> inf). `dtype` is an FP8 dtype of `FP8_MAX`
    (`torch.float8_e4m3fn` or `torch.float8_e5m2`; a `ValueError` otherwise).
    """
    if dtype not in FP8_MAX:
        raise ValueError(
            f"quantize_dequantize: `dtype` must be one of {', '.join(str(d) for d in FP8_MAX)}, got {dtype!r}."
        )
    return round_to_fp8(x.float() * scale, dtype) / scale


def scale_from_amax(amax: torch.Tensor, dtype: torch.dtype, margin: int = 0) -> torch.Tensor:
    """Per-tensor quantisation scale `fp8_max / amax / 2**margin` (FP32, no host sync)."""
    return (FP8_MAX[dtype] / amax.float().clamp_min(_EPS)) / (2.0**margin)


def _history_amax(history: torch.Tensor, current: torch.Tensor, algo: str, last: torch.Tensor) -> torch.Tensor:
    """The amax the scale of this step comes from: "max" over the history (NaN entries ignored) or its most recent
    entry. As in Transformer Engine, a result that is zero or not finite (an overflowed step in the window) keeps the
    previous scale (`last`, the amax it came from); with no previous scale either (first use), the current amax."""
    ref = torch.where(history.isnan(), 0.0, history).amax() if algo == "max" else history[0]
    fallback = torch.where(last > 0, last, current)
    return torch.where(torch.isfinite(ref) & (ref > 0), ref, fallback)


def _check_history_and_margin(amax_history_len, margin) -> None:
    """`amax_history_len` a positive int, `margin` a non-negative int (scales are divided by `2**margin`)."""
    if isinstance(amax_history_len, bool) or not isinstance(amax_history_len, Integral) or amax_history_len < 1:
        raise ValueError(f"amax_history_len must be a positive int, got {amax_history_len!r}.")
    if isinstance(margin, bool) or not isinstance(margin, Integral) or margin < 0:
        raise ValueError(f"margin must be a non-negative int (scales are divided by 2**margin), got {margin!r}.")


def default_amax_group():
    """The group delayed-scaling amaxes are reduced over by default: the whole world when `torch.distributed` is
    initialised with more than one rank (DDP, FSDP2: the data-parallel ranks), else none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def _reduce_amax(module: Fp8Linear, *amaxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's scalar `amaxes` maxed over `module`'s amax reduction group (one collective): the amaxes of the whole
    data-parallel batch, NaN where any rank's is NaN (as the amax of one tensor holding a NaN), so every rank records
    the same values and derives the same scales. Without a group (one process) they are returned as they are."""
    group = module.amax_reduction_group if module.amax_reduction_group is not None else default_amax_group()
    if group is None:
        return amaxes
    import torch.distributed as dist

    amax = torch.stack(amaxes)
    nan = amax.isnan()
    buf = torch.cat([torch.where(nan, float("-inf"), amax), nan.to(amax.dtype)])
    dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=group)
    n = amax.numel()
    return tuple(torch.where(buf[n:] > 0, float("nan"), buf[:n]).unbind())


def _amax(t: torch.Tensor) -> torch.Tensor:
    """`max|t|` in FP32; 0 for an empty tensor (a 0-token batch), where `amax()` raises."""
    if t.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=t.device)
    return t.detach().abs().amax().float()


def _autocast_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype `torch.autocast` gives a matmul of `dtype` inputs on `device_type` now, or `None` outside autocast (or
    on a device type without autocast, e.g. "meta") and for float64 inputs, which autocast leaves alone (`nn.Linear`
    on float64 keeps float64)."""
    if dtype == torch.float64:
        return None
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _no_autocast(device_type: str):
    """Autocast off for the emulated GEMMs: under `torch.autocast` their FP32 operands (FP8 values times a scale) would
    be rounded to the autocast dtype before the product, which an FP8 GEMM does not do."""
    if not torch.amp.is_autocast_available(device_type):  # e.g. "meta": no autocast to turn off
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def _record(history: torch.Tensor, amax: torch.Tensor) -> None:
    history.copy_(torch.roll(history, 1, dims=0))
    history[0] = amax


_AUXILIARY_DEPTH = 0  # > 0 inside `fp8_auxiliary_pass` (process-wide: CUDA backward runs on autograd's own threads)
_AUXILIARY_EPOCH = 0  # outermost `fp8_auxiliary_pass` entries so far: a module's auxiliary log is of the latest one


@contextlib.contextmanager
def fp8_auxiliary_pass():
    """Context manager for auxiliary passes of a training run that are not training steps, such as GRAPE's
    per-domain reweighting gradients: inside it, training-mode forwards of delayed-scaling [`Fp8Linear`] modules and
    their backwards behave as `eval()` ones do for the scaling state: they quantise with the scales the amax history
    gives and record nothing (no history entry, no amax reduction across ranks, no activation-checkpointing log), so
    the persistent FP8 state after a step is that of the training step alone. Backwards must run inside the context
    too (`torch.autograd.grad` / `.backward()` within the `with` block); a backward run after the block is handled as
    well where it matters, under activation checkpointing (whose recomputation of the forward runs in the backward):
    the recomputation of an auxiliary forward is recognised by its operands and quantised as inside the block. Current
    scaling keeps no state and is unaffected; the torchao and Transformer Engine backends are not affected either
    (torchao's dynamic scaling keeps no history; Transformer Engine records as it does)."""
    global _AUXILIARY_DEPTH, _AUXILIARY_EPOCH
    if _AUXILIARY_DEPTH == 0:
        _AUXILIARY_EPOCH += 1
    _AUXILIARY_DEPTH += 1
    try:
        yield
    finally:
        _AUXILIARY_DEPTH -= 1


def _recording(module: nn.Module) -> bool:
    """Whether a forward of `module` now is a training forward that records into its scaling state."""
    return module.training and _AUXILIARY_DEPTH == 0


def _matches(fingerprints: list[torch.Tensor], fingerprint: torch.Tensor) -> torch.Tensor:
    """Which of `fingerprints` equal `fingerprint` exactly (a bool vector)."""
    return torch.stack(fingerprints).eq(fingerprint).all(dim=1)


def _log_auxiliary(module: Fp8Linear, fingerprint: torch.Tensor, in_backward: bool) -> None:
    """Keep the fingerprints of the auxiliary forwards of the latest `fp8_auxiliary_pass` whose recomputation is still
    to come; a recomputation inside the context consumes its entry."""
    log = module._fp8_aux_log
    if in_backward:
        if log:
            match = _matches(log, fingerprint)
            if bool(match.any()):
                del log[int(match.nonzero()[0, 0])]
        return
    if module._fp8_aux_epoch != _AUXILIARY_EPOCH:
        log.clear()
        module._fp8_aux_epoch = _AUXILIARY_EPOCH
    log.append(fingerprint.detach())
    if len(log) > _MAX_FORWARD_LOG:
        del log[0]


def _recomputes_auxiliary(module: Fp8Linear, fingerprint: torch.Tensor) -> bool:
    """Whether a recomputation outside `fp8_auxiliary_pass` (activation checkpointing in a backward run after the
    block) is of an auxiliary forward: its operands equal a logged auxiliary forward's, and no training forward's
    (a training forward on the very same inputs takes precedence). The entry is consumed."""
    log = module._fp8_aux_log
    match = _matches(log, fingerprint)
    if not bool(match.any()):
        return False
    training = module._fp8_forward_log
    if training and bool(_matches([fp for fp, _ in training], fingerprint).any()):
        return False
    del log[int(match.nonzero()[0, 0])]
    return True


def _in_backward() -> bool:
    """Whether autograd is executing a backward pass now (where activation checkpointing recomputes forwards)."""
    return torch._C._current_graph_task_id() != -1


#: Training forwards whose scales a module keeps for recomputation (per backward; the oldest are dropped beyond it).
_MAX_FORWARD_LOG = 256


def _fingerprint(x2: torch.Tensor, amax_x: torch.Tensor, amax_w: torch.Tensor) -> torch.Tensor:
    """Float64 summary of a forward's operands (input amax, sum, sum of |x|; weight amax): the recomputation of a
    forward by activation checkpointing sees the same operands, another forward (almost surely) different ones."""
    x = x2.detach()
    fp = torch.stack([amax_x.double(), x.sum(dtype=torch.float64), x.abs().sum(dtype=torch.float64), amax_w.double()])
    return torch.nan_to_num(fp, nan=1e300, posinf=1e301, neginf=-1e301)


def _log_forward(module: Fp8Linear, fingerprint: torch.Tensor, ref_x: torch.Tensor, ref_w: torch.Tensor) -> None:
    """Remember a training forward's scale references for its recomputation. The log spans the forwards since the
    module's last backward (all forwards whose backward, and so recomputation, is still to come)."""
    if module._fp8_backward_seen:
        module._fp8_forward_log.clear()
        module._fp8_backward_seen = False
        module._fp8_log_use = None
    log = module._fp8_forward_log
    log.append((fingerprint, torch.stack([ref_x, ref_w]).detach()))
    if len(log) > _MAX_FORWARD_LOG:
        del log[0]
        if not getattr(module, "_fp8_log_warned", False):
            module._fp8_log_warned = True
            warnings.warn(
                f"Fp8Linear: more than {_MAX_FORWARD_LOG} training forwards before one backward; with activation "
                "checkpointing the oldest ones will be recomputed with other forwards' scales (gradients differ from "
                "a run without checkpointing). Forwards without a backward: run them in eval() mode.",
                stacklevel=3,
            )


def _recomputed_refs(module: Fp8Linear, fingerprint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The scale references of the original forward that activation checkpointing recomputes now: the logged forward
    with the closest fingerprint (an exact match for a deterministic recomputation), each used once per backward pass
    (so that two forwards on identical inputs each get their own, the latest first as autograd runs the later
    forward's backward first); no host synchronisation."""
    log = module._fp8_forward_log
    fps = torch.stack([fp for fp, _ in log])
    refs = torch.stack([r for _, r in log])
    task = torch._C._current_graph_task_id()
    if module._fp8_log_use is None or module._fp8_log_use[0] != task or module._fp8_log_use[1].numel() != len(log):
        module._fp8_log_use = (task, torch.zeros(len(log), dtype=torch.float64, device=fps.device))
    used = module._fp8_log_use[1]
    dist = ((fps - fingerprint).abs() / (fingerprint.abs() + 1e-30)).sum(1)
    dist = torch.where(dist.isnan(), torch.inf, dist).clamp_max(1e200) + used * 1e250
    idx = len(log) - 1 - dist.flip(0).argmin()  # on a tie (identical inputs) the latest: backward runs last-first
    used[idx] += 1.0
    ref = refs[idx]
    return ref[0], ref[1]


class _Fp8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, module: Fp8Linear):
        fwd_dtype, _ = fp8_dtypes(module.fp8_format)
        x2 = x.reshape(-1, x.shape[-1])
        amax_x = _amax(x2)
        amax_w = _amax(weight)
        recording = _recording(module)
        if recording and x2.numel() == 0 and module.scaling == "delayed":
            # a 0-token batch (its output is empty too) leaves the scaling state as it is: it has no amax to record.
            # With an amax reduction group the other ranks' recording collectives still need this rank's (amax 0), and
            # every rank then records the same group amaxes as before
            group = module.amax_reduction_group if module.amax_reduction_group is not None else default_amax_group()
            recording = group is not None
        if module.scaling == "delayed":
            hist = module.fp8_amax_history
            auxiliary = module.training and _AUXILIARY_DEPTH > 0
            in_backward = _in_backward()
            fingerprint = _fingerprint(x2, amax_x, amax_w) if recording or auxiliary else None
            if recording and in_backward and module._fp8_aux_log and _recomputes_auxiliary(module, fingerprint):
                # the recomputation of an auxiliary forward whose backward runs after the context: as inside it
                recording = False
            if auxiliary:
                _log_auxiliary(module, fingerprint, in_backward)
                # its own backward (without checkpointing) drops the entry: no recomputation will come
                ctx.aux_fingerprint = None if in_backward else module._fp8_aux_log[-1]
            if recording and in_backward and module._fp8_forward_log:
                # activation-checkpointing recompute inside backward: reuse the scales of the forward it recomputes
                # (with several forwards before one backward, each its own) and do not record its amax a second time
                ref_x, ref_w = _recomputed_refs(module, fingerprint)
            else:
                if recording:  # recorded: the data-parallel batch's amax, the same on every rank
                    amax_x, amax_w = _reduce_amax(module, amax_x, amax_w)
                last = module.fp8_scale_amax
                ref_x = _history_amax(hist[:, 0], amax_x, module.amax_compute_algo, last[0])
                ref_w = _history_amax(hist[:, 1], amax_w, module.amax_compute_algo, last[1])
                if recording:
                    _record(hist[:, 0], amax_x)
                    _record(hist[:, 1], amax_w)
                    last[0], last[1] = ref_x, ref_w
                    _log_forward(module, fingerprint, ref_x, ref_w)
        else:
            ref_x, ref_w = amax_x, amax_w
        xq = quantize_dequantize(x2, scale_from_amax(ref_x, fwd_dtype, module.margin), fwd_dtype)
        wq = quantize_dequantize(weight, scale_from_amax(ref_w, fwd_dtype, module.margin), fwd_dtype)
        out_dtype = _autocast_dtype(x.device.type, x.dtype) or x.dtype
        with _no_autocast(x.device.type):  # FP32 product of the FP8 operands, also under torch.autocast
            out = xq @ wq.t()
            if bias is not None:
                out = out + bias.float()
        ctx.save_for_backward(xq, wq)
        ctx.module = module
        # a backward of an eval-mode (influence, attribution) or auxiliary forward records nothing
        ctx.training = recording
        ctx.has_bias = bias is not None
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        # 2-D: the caller reshapes, so the module's output is not a view made inside this Function and may be
        # updated in place as nn.Linear's (peft's AdaLoRA adds to it with +=). Under torch.autocast the output has
        # the autocast dtype, as nn.Linear's (and an FP8 GEMM's with that output type, torchao's, Transformer Engine's)
        return out.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        xq, wq = ctx.saved_tensors
        module: Fp8Linear = ctx.module
        entry = getattr(ctx, "aux_fingerprint", None)
        if entry is not None:
            module._fp8_aux_log[:] = [fp for fp in module._fp8_aux_log if fp is not entry]
        if ctx.training:
            module._fp8_backward_seen = True  # the next training forward starts a new forward log
        _, grad_dtype = fp8_dtypes(module.fp8_format)
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        amax_g = _amax(g2)
        if module.scaling == "delayed":
            if ctx.training:
                (amax_g,) = _reduce_amax(module, amax_g)
            hist = module.fp8_amax_history
            ref_g = _history_amax(hist[:, 2], amax_g, module.amax_compute_algo, module.fp8_scale_amax[2])
            if ctx.training:  # as in the forward: only training steps move the persistent scaling state
                _record(hist[:, 2], amax_g)
                module.fp8_scale_amax[2] = ref_g
        else:
            ref_g = amax_g
        gq = quantize_dequantize(g2, scale_from_amax(ref_g, grad_dtype, module.margin), grad_dtype)
        with _no_autocast(g2.device.type):
            grad_x = (gq @ wq).to(ctx.x_dtype).reshape(ctx.x_shape)  # dgrad GEMM, FP8 x FP8
            grad_w = (gq.t() @ xq).to(ctx.w_dtype)  # wgrad GEMM, FP8 x FP8
        grad_b = g2.float().sum(0).to(ctx.w_dtype) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


class Fp8Linear(nn.Linear):
    """`nn.Linear` whose forward GEMM and both backward GEMMs (dgrad, wgrad) run on FP8-quantised operands.

    Parameters stay in their high-precision dtype (master weights); only GEMM inputs are quantised. With
    `scaling="delayed"`, the persistent buffers `fp8_amax_history` (shape `(amax_history_len, 3)`: input, weight,
    grad_output) and `fp8_scale_amax` (shape `(3,)`: the amax each operand's current scale came from, kept when the
    history's amax is zero or not finite, as Transformer Engine keeps its scale) are saved in the model state dict and
    so in every Trainer checkpoint. Only training-mode forwards and their backwards record amaxes: an `eval()` forward,
    and the backward of one (influence functions), use the scales the history gives and leave it unchanged, as do
    training-mode passes inside [`fp8_auxiliary_pass`] (e.g. GRAPE's reweighting gradients). Under
    data parallelism (DDP, FSDP2) the recorded amaxes are maxed over `amax_reduction_group` first, as Transformer
    Engine reduces them: every rank holds the same history and scales, those of one process on the whole batch, so a
    checkpoint written by rank 0 is every rank's state.

    Args:
        in_features, out_features, bias: As `nn.Linear`.
        scaling (`str`): "current" (scale from this tensor's amax) or "delayed" (from the amax history).
        fp8_format (`str`): "hybrid" (E4M3 forward, E5M2 gradients) or "e4m3".
        amax_history_len (`int`): History length for delayed scaling (Transformer Engine default 1024).
        amax_compute_algo (`str`): "max" over the history or "most_recent".
        margin (`int`): Scales are divided by `2**margin`.
        amax_reduction_group (*optional*): delayed scaling: the `torch.distributed` group the recorded amaxes are
            maxed over in training. Default: the whole world when `torch.distributed` is initialised with more than
            one rank at the time of the forward, else none. Every rank of the group must run the same training
            forwards and backwards (as data-parallel ranks do).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        scaling: str = "delayed",
        fp8_format: str = "hybrid",
        amax_history_len: int = 1024,
        amax_compute_algo: str = "max",
        margin: int = 0,
        amax_reduction_group=None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if scaling not in SCALINGS:
            raise ValueError(f"scaling={scaling!r} is not supported; choose one of {SCALINGS}.")
        if amax_compute_algo not in AMAX_ALGOS:
            raise ValueError(f"amax_compute_algo={amax_compute_algo!r} is not supported; choose one of {AMAX_ALGOS}.")
        _check_history_and_margin(amax_history_len, margin)
        fp8_dtypes(fp8_format)
        self.scaling, self.fp8_format, self.margin = scaling, fp8_format, int(margin)
        self.amax_compute_algo = amax_compute_algo
        self.amax_reduction_group = amax_reduction_group
        # (fingerprint, (input, weight) amax references) of the training forwards since the last backward: the scales
        # an activation-checkpointing recompute of each of them reuses
        self._fp8_forward_log: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._fp8_backward_seen = False
        # fingerprints of the auxiliary (`fp8_auxiliary_pass`) forwards whose checkpointed recomputation is to come
        self._fp8_aux_log: list[torch.Tensor] = []
        self._fp8_aux_epoch = -1
        self._fp8_log_use = None  # (graph task, times each logged forward was recomputed in it)
        if scaling == "delayed":
            self.fp8_amax_history = nn.Buffer(torch.zeros(amax_history_len, 3, device=device), persistent=True)
            self.fp8_scale_amax = nn.Buffer(torch.zeros(3, device=device), persistent=True)

    # 2: `fp8_scale_amax` added (delayed scaling). A state dict saved before it has no such entry.
    _version = 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        key = prefix + "fp8_scale_amax"
        version = local_metadata.get("version")
        if self.scaling == "delayed" and key not in state_dict and (version is None or version < 2):
            # an older checkpoint (or a safetensors file, which keeps no module versions) without the buffer: no scale
            # was kept from an earlier step, which the forward reads as "use the current amax" (as a fresh module)
            if (prefix + "fp8_amax_history") in state_dict:
                state_dict[key] = torch.zeros_like(self.fp8_scale_amax)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> Fp8Linear:
        """An `Fp8Linear` sharing `linear`'s parameters (no copy)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta", **kwargs)
        new.weight = linear.weight
        new.bias = linear.bias
        if new.scaling == "delayed":
            new.fp8_amax_history = torch.zeros_like(new.fp8_amax_history, device=linear.weight.device)
            new.fp8_scale_amax = torch.zeros_like(new.fp8_scale_amax, device=linear.weight.device)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Fp8LinearFunction.apply(x, self.weight, self.bias, self)
        return out.reshape(*x.shape[:-1], self.weight.shape[0])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fp8={self.fp8_format}, scaling={self.scaling}"


# --------------------------------------------------------------------------------------------------------------------
# FP8 attention BMMs (QK^T and PV)
# --------------------------------------------------------------------------------------------------------------------


class _QuantizeForward(torch.autograd.Function):
    """Quantise-dequantise in forward with the tensor's own (current) scale; straight-through gradient."""

    @staticmethod
    def forward(ctx, x, dtype):
        amax = _amax(x)
        return quantize_dequantize(x, scale_from_amax(amax, dtype), dtype).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _QuantizeGrad(torch.autograd.Function):
    """Identity in forward; quantises the incoming gradient (the backward GEMMs' FP8 operand)."""

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.dtype = dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        amax = _amax(grad)
        return quantize_dequantize(grad, scale_from_amax(amax, ctx.dtype), ctx.dtype).to(grad.dtype), None


def fp8_bmm(a: torch.Tensor, b: torch.Tensor, fp8_format: str = "hybrid") -> torch.Tensor:
    """Batched `a @ b` with both operands in FP8 (forward dtype) and the output gradient in FP8 (gradient dtype), so
    the forward and both backward BMMs see FP8 inputs; accumulation in FP32."""
    fwd, grad = fp8_dtypes(fp8_format)
    with _no_autocast(a.device.type):  # FP32 product of the FP8 operands, also under torch.autocast
        out = torch.matmul(_QuantizeForward.apply(a, fwd).float(), _QuantizeForward.apply(b, fwd).float())
    return _QuantizeGrad.apply(out, grad).to(a.dtype)


def fp8_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with emulated FP8 BMMs (QK^T and PV, current per-tensor scaling, HYBRID format); softmax in
    FP32. An approximation of cuDNN FP8 attention, whose internal scaling of P is not public. Registered with
    transformers' attention interface as "fp8_emulated". The logit modifiers of transformers' eager attention are
    applied as there: `softcap` (Gemma 2's `attn_logit_softcapping`, `softcap * tanh(scores / softcap)` before the
    mask) and attention sinks (`s_aux`, else `module.sinks`: one logit per head joining the softmax, then dropped)."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    if n_rep > 1:
        b, h, t, d = key.shape
        key = key[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)
        value = value[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)
    scores = fp8_bmm(query, key.transpose(2, 3)) * scaling
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask
    sinks = kwargs.get("s_aux")
    sinks = sinks if sinks is not None else getattr(module, "sinks", None)
    if isinstance(sinks, torch.Tensor):
        b, h, t, _ = scores.shape
        logits = torch.cat([scores, sinks.reshape(1, h, 1, 1).expand(b, h, t, 1).to(scores.dtype)], dim=-1)
        logits = logits - logits.amax(dim=-1, keepdim=True).detach()
        probs = nn.functional.softmax(logits, dim=-1, dtype=torch.float32)[..., :-1].to(query.dtype)
    else:
        probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = fp8_bmm(probs, value)
    return out.transpose(1, 2).contiguous(), probs


FP8_ATTENTION_NAME = "fp8_emulated"


def register_fp8_attention() -> str:
    """Register [`fp8_attention_forward`] (and the eager mask format) under "fp8_emulated"; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(FP8_ATTENTION_NAME, fp8_attention_forward)
    AttentionMaskInterface.register(FP8_ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    return FP8_ATTENTION_NAME
