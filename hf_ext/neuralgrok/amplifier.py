"""The NeuralGrok amplifier G_phi and its outer (meta) update."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..utils.checks import is_bool
from ..utils.distributed import is_dtensor as _is_dtensor

# safetensors' dtype names of the floating dtypes an amplifier can be saved in
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


class NeuralAmplifier(nn.Module, PyTorchModelHubMixin):
    r"""
    Learned gradient transform of NeuralGrok: for every parameter tensor with gradient `g` (flattened to `n`
    scalars),

        s = MLP(g)                  # one scalar-in/scalar-out MLP applied to every entry
        p = softmax(s over all n entries of the tensor)
        g' = c * (p * g) / ||p * g||

    so each tensor's transformed gradient has l2 norm exactly `c`, with a learned re-weighting of its coordinates.

    Args:
        hidden_dims (`Sequence[int]`, *optional*, defaults to `(32, 32)`):
            Hidden widths of the MLP `1 -> h_1 -> ... -> h_k -> 1` (ReLU between layers). `(32, 32)` is the paper's
            "3-layer MLP, hidden 32"; the final reference code uses `(64, 128, 64)` (~15x the MACs per entry of the
            MLP; the exact fast path below makes the per-entry cost nearly independent of the width).
        c (`float`, *optional*, defaults to 1.0):
            Norm of each transformed gradient tensor (the paper uses 1.0; the reference code defaults to 0.2).
        softmax_dim (`int`, *optional*, defaults to 0):
            0 normalises over all entries of a tensor (the method). -1 reproduces a bug of an intermediate reference
            commit: the softmax runs over a width-1 axis, `p == 1`, and the transform collapses to plain per-tensor
            gradient normalisation. Only for ablations.
        dropout (`float`, *optional*, defaults to 0.0): dropout after each hidden ReLU (the final code uses none).
        eps (`float`, *optional*, defaults to 1e-30): floor of `||p * g||` (an all-zero gradient stays zero).
        chunk_size (`int`, *optional*, defaults to 262144): entries per MLP call when no graph is built (the inner
            transform), which bounds its activation memory on large tensors. The piecewise-linear path keeps a few
            floats per entry instead of the MLP's activations and batches whole tensors in groups of up to
            `PIECES_GROUP_CHUNKS * chunk_size` entries.

    Saving: `save_pretrained(folder)` writes the constructor's arguments (`config.json`) and the parameters
    (`model.safetensors`); `NeuralAmplifier.from_pretrained(folder)` rebuilds it (huggingface_hub's
    `PyTorchModelHubMixin`) in the dtype it was saved in (a float64 amplifier reloads as float64). [`NeuralGrokTrainer`]'s `save_model()` writes the trained amplifier this way into
    `<output_dir>/neuralgrok_amplifier`.

    Evaluation: a ReLU MLP of one scalar is continuous and piecewise linear with finitely many kinks, so unless dropout
    is active or the kinks outnumber a quarter of the entries, the scores are computed exactly from that form (see
    [`linear_pieces`], [`fast_pieces`]): kinks found once per call in float64, then per entry one affine map (a binary
    search only for entries outside the segment that holds 0). The values, and with autograd the gradients w.r.t. the
    MLP's parameters, equal the MLP's (to float32 rounding; the fast path is float64 inside). [`transform_`] does this
    for all tensors in one batched call, so the per-entry cost no longer grows with `macs_per_entry`.
    """

    #: Entries of one batched piecewise-linear call in [`transform_many`], in units of `chunk_size`.
    PIECES_GROUP_CHUNKS = 16

    def __init__(
        self,
        hidden_dims: Sequence[int] = (32, 32),
        c: float = 1.0,
        softmax_dim: int = 0,
        dropout: float = 0.0,
        eps: float = 1e-30,
        chunk_size: int = 262144,
    ):
        super().__init__()
        if isinstance(hidden_dims, str | bytes) or not isinstance(hidden_dims, Sequence):
            # checked before tuple(): an int or None failed there with "'int' object is not iterable"
            hint = f"; one hidden layer of width {hidden_dims}: ({hidden_dims},)" if _is_int(hidden_dims) else ""
            raise TypeError(
                f"hidden_dims={hidden_dims!r} must be a sequence of positive ints, the MLP's hidden widths, e.g. "
                f"(32, 32){hint}."
            )
        hidden_dims = tuple(hidden_dims)
        if not hidden_dims or any(not _is_int(h) or h <= 0 for h in hidden_dims):
            raise ValueError(
                f"hidden_dims={hidden_dims!r} must be a non-empty sequence of positive ints, e.g. (32, 32)."
            )
        hidden_dims = tuple(int(h) for h in hidden_dims)  # numpy ints as Python ints
        if not _positive_finite(c):
            raise ValueError(f"c={c!r} must be a finite number > 0 (the norm of each transformed gradient tensor).")
        if softmax_dim not in (0, -1):
            raise ValueError(f"softmax_dim={softmax_dim} must be 0 (the method) or -1 (the ablation bug).")
        if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be a number in [0, 1).")
        if not _positive_finite(eps):
            raise ValueError(
                f"eps={eps!r} must be a finite number > 0 (the floor of ||p * g||; with 0 an all-zero gradient tensor "
                "becomes 0/0 = NaN), e.g. the default 1e-30."
            )
        if not _positive_finite(chunk_size) or chunk_size < 1 or chunk_size != int(chunk_size):
            # a fraction was truncated silently (2.5 -> 2); a whole float such as 1e6 is accepted
            raise ValueError(f"chunk_size={chunk_size!r} must be a whole positive number of entries, e.g. 262144.")
        self.hidden_dims = hidden_dims
        self.c = float(c)
        self.softmax_dim = softmax_dim
        self.eps = eps
        self.chunk_size = int(chunk_size)
        self.dropout = float(dropout)
        layers: list[nn.Module] = []
        prev = 1
        for width in hidden_dims:
            layers += [nn.Linear(prev, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        layers.append(nn.Linear(prev, 1))
        self.net = nn.Sequential(*layers)

    def init_config(self) -> dict:
        """The constructor's arguments of this amplifier, as JSON values (`config.json` of [`save_pretrained`])."""
        return {
            "hidden_dims": list(self.hidden_dims),
            "c": self.c,
            "softmax_dim": self.softmax_dim,
            "dropout": self.dropout,
            "eps": float(self.eps),
            "chunk_size": self.chunk_size,
        }

    def save_pretrained(self, save_directory, *, config: dict | None = None, **kwargs):
        """huggingface_hub's `save_pretrained` with this amplifier's own arguments as its config (by default): the
        arguments the mixin records at construction leave out values that are not JSON as given (numpy ints in
        `hidden_dims`), and `from_pretrained` then built an amplifier of the default widths."""
        return super().save_pretrained(
            save_directory, config=self.init_config() if config is None else config, **kwargs
        )

    @classmethod
    def _load_as_safetensor(cls, model, model_file: str, map_location: str, strict: bool):
        """huggingface_hub's loader copies the saved tensors into the freshly built (float32) amplifier, so one saved in
        float64 came back as float32, silently. The amplifier is first cast to the dtype its floating tensors were saved
        in (one dtype for all of them, as `save_pretrained` of one amplifier writes)."""
        from safetensors import safe_open

        with safe_open(model_file, framework="pt") as fh:
            dtypes = {fh.get_slice(key).get_dtype() for key in fh.keys()}
        saved = {_SAFETENSORS_DTYPES[d] for d in dtypes if d in _SAFETENSORS_DTYPES}
        if len(saved) > 1:
            raise ValueError(
                f"{model_file} holds amplifier tensors of several dtypes {sorted(str(d) for d in saved)}: an amplifier "
                "has one dtype; save it again with `save_pretrained` after `.to(dtype)`."
            )
        if saved:
            model.to(saved.pop())
        return super()._load_as_safetensor(model, model_file, map_location, strict)

    @property
    def macs_per_entry(self) -> int:
        """Multiply-accumulates of one MLP evaluation (one gradient entry)."""
        dims = (1, *self.hidden_dims, 1)
        return sum(a * b for a, b in zip(dims[:-1], dims[1:]))

    def _linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def _dropout_active(self) -> bool:
        return self.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.net)

    @torch.no_grad()
    def linear_pieces(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        r"""
        The exact piecewise-linear form of the MLP (dropout off). A ReLU MLP of one scalar `x` is continuous and affine
        between finitely many kinks. Returns `(knots, masks)`: `knots` (float64, sorted, `K` entries) split the real
        line into `K + 1` segments, segment `i` being `[knots[i-1], knots[i]]` (unbounded at both ends), and
        `masks[l][i]` is the ReLU pattern of hidden layer `l` on segment `i`, constant on the whole segment.

        Found layer by layer in float64: on every current segment each next pre-activation is affine in `x`, so its
        zero crossing inside the segment (if any) is added as a knot; the pattern of every layer is then read at an
        interior point of each final segment.
        """
        linears = self._linears()
        device = linears[0].weight.device
        f64 = dict(dtype=torch.float64, device=device)
        knots = torch.empty(0, **f64)
        slope = torch.ones(1, 1, **f64)  # (segments, width): the current layer's output is slope * x + intercept
        intercept = torch.zeros(1, 1, **f64)
        inf = torch.tensor([float("inf")], **f64)
        for layer in linears[:-1]:
            weight = layer.weight.to(torch.float64).T
            pre_slope = slope @ weight
            pre_intercept = intercept @ weight
            if layer.bias is not None:
                pre_intercept = pre_intercept + layer.bias.to(torch.float64)
            lo = torch.cat([-inf, knots])[:, None]
            hi = torch.cat([knots, inf])[:, None]
            crossing = -pre_intercept / pre_slope  # +-inf or nan where the pre-activation is constant
            inside = (pre_slope != 0) & (crossing > lo) & (crossing < hi)
            parent_knots = knots
            knots = torch.unique(torch.cat([knots, crossing[inside]]))  # sorted
            points = _interior_points(knots)
            parent = torch.searchsorted(parent_knots, points)
            pre = pre_slope[parent] * points[:, None] + pre_intercept[parent]
            on = pre > 0
            slope = torch.where(on, pre_slope[parent], 0.0)
            intercept = torch.where(on, pre_intercept[parent], 0.0)
        # The pattern of every layer on the final segments (all crossings are knots: constant on each segment).
        points = _interior_points(knots)[:, None]
        masks = []
        hidden = points
        for layer in linears[:-1]:
            hidden = torch.nn.functional.linear(
                hidden,
                layer.weight.to(torch.float64),
                None if layer.bias is None else layer.bias.to(torch.float64),
            )
            masks.append(hidden > 0)
            hidden = hidden.clamp_min(0)
        return knots, masks

    def affine_pieces(
        self, masks: Sequence[torch.Tensor], dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(slope, intercept)` of the MLP on every segment of [`linear_pieces`], differentiable in the parameters."""
        linears = self._linears()
        dtype = dtype or linears[0].weight.dtype
        slope = intercept = None
        for layer, mask in zip(linears, [*masks, None]):
            weight = layer.weight.to(dtype)
            if slope is None:
                slope = weight.T.expand(mask.shape[0], -1)
                intercept = torch.zeros_like(slope)
            else:
                slope = slope @ weight.T
                intercept = intercept @ weight.T
            if layer.bias is not None:
                intercept = intercept + layer.bias.to(dtype)
            if mask is not None:
                slope = slope * mask
                intercept = intercept * mask
        return slope[:, 0], intercept[:, 0]

    def fast_pieces(self, num_entries: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """
        `(knots, slope, intercept)` for the exact piecewise-linear evaluation of `num_entries` scores, or `None` when
        the direct MLP is used instead: dropout active, fewer than 64 entries, or more than `num_entries / 4` knots.
        `slope` and `intercept` are float64; with autograd on they carry the graph to the parameters (the gradient
        w.r.t. them is exact: the ReLU pattern is constant on each segment).
        """
        if num_entries < 64 or self._dropout_active():
            return None
        knots, masks = self.linear_pieces()
        if knots.numel() > num_entries // 4:
            return None
        return (knots, *self.affine_pieces(masks, torch.float64))

    def _scores(self, column: torch.Tensor, pieces=None) -> torch.Tensor:
        """MLP scores of `column` (shape `(n, 1)`, the net's dtype): through `pieces` when given, else the MLP."""
        n = column.shape[0]
        if pieces is None:
            if torch.is_grad_enabled() or n <= self.chunk_size:
                return self.net(column)
            # Without a graph, evaluate the MLP in chunks: peak memory ~chunk_size * max(hidden_dims) floats.
            return torch.cat([self.net(part) for part in column.split(self.chunk_size)])
        knots, slope, intercept = pieces
        knots = knots.to(slope.dtype)
        # Gradient entries crowd around 0: evaluate all on the segment holding 0, then redo the others by search.
        center = int(torch.searchsorted(knots, knots.new_zeros(1)))
        lo = float(knots[center - 1]) if center > 0 else -float("inf")
        hi = float(knots[center]) if center < knots.numel() else float("inf")
        parts = []
        for part in column.view(-1).split(self.chunk_size):
            x = part.to(slope.dtype)
            scores = torch.addcmul(intercept[center], slope[center], x)
            outside = ((x <= lo) | (x > hi)).nonzero().view(-1)  # nan counts as outside
            if outside.numel():
                x_out = x[outside]
                segment = torch.searchsorted(knots, x_out)
                scores_out = torch.addcmul(intercept[segment], slope[segment], x_out)
                bad = ~torch.isfinite(x_out)
                if bool(bad.any()):  # inf/nan: exactly what the MLP gives
                    scores_out = scores_out.index_put(
                        (bad,), self.net(part[outside][bad].view(-1, 1)).view(-1).to(x.dtype)
                    )
                scores = scores.index_put((outside,), scores_out)
            parts.append(scores.to(column.dtype))
        return (torch.cat(parts) if len(parts) > 1 else parts[0]).view(n, 1)

    def probabilities(self, grad: torch.Tensor, pieces="auto") -> torch.Tensor:
        """
        The softmax weights `p` for `grad` (same shape; they sum to 1 over the tensor when `softmax_dim=0`).
        `pieces`: the output of [`fast_pieces`] to reuse across tensors, `None` for the direct MLP, or `"auto"`.
        """
        _check_gradient(grad, "grad")
        _check_pieces(pieces)
        column = grad.reshape(-1, 1).to(self.net[0].weight.dtype)
        if isinstance(pieces, str):
            pieces = self.fast_pieces(column.shape[0])
        return torch.softmax(self._scores(column, pieces), dim=self.softmax_dim).view_as(grad)

    def forward(self, grad: torch.Tensor, pieces="auto") -> torch.Tensor:
        """Transform one gradient tensor; the result has the same shape and dtype and l2 norm `c`."""
        p = self.probabilities(grad, pieces)
        weighted = p * grad.to(p.dtype)
        norm = _norm_floor(weighted, self.eps)
        return (self.c * weighted / norm).to(grad.dtype)

    def transform_many(self, grads: Sequence[torch.Tensor], pieces="auto") -> list[torch.Tensor]:
        """
        `[self(g) for g in grads]` in batched evaluations (autograd as for `self(g)`): through the piecewise-linear form,
        one score call per group of whole tensors (up to `PIECES_GROUP_CHUNKS * chunk_size` entries; one group for a
        small model), then per tensor `c * e g / ||e g||` with `e = exp(s - max s)`, which equals `c * p g / ||p g||`
        exactly (softmax's normaliser cancels in the ratio). Without it (dropout, `softmax_dim=-1`, mixed dtypes or
        devices), tensor by tensor.
        """
        if isinstance(grads, torch.Tensor):
            # a bare tensor was iterated along its first axis: every row (every entry of a 1-D tensor) transformed on
            # its own to norm c, silently (ones(3) gave [1, 1, 1], not ones(3) / sqrt(3))
            raise TypeError(
                f"grads must be a sequence (e.g. a list) of gradient tensors, got one tensor of shape "
                f"{tuple(grads.shape)}: pass [grad], or call the amplifier on it, amplifier(grad)."
            )
        grads = list(grads)
        for i, grad in enumerate(grads):
            _check_gradient(grad, f"grads[{i}]")
        _check_pieces(pieces)
        if not grads:
            return []
        sizes = [g.numel() for g in grads]
        total = sum(sizes)
        if isinstance(pieces, str):
            pieces = self.fast_pieces(total)
        if pieces is None or self.softmax_dim != 0 or len({(g.dtype, g.device) for g in grads}) > 1:
            return [self(g, pieces) for g in grads]
        # Whole tensors in groups of at most PIECES_GROUP_CHUNKS * chunk_size entries: the piecewise-linear form keeps
        # a few float64 values per entry (not the MLP's activations), so a group may be much larger than one MLP chunk.
        limit = self.PIECES_GROUP_CHUNKS * self.chunk_size
        out: list[torch.Tensor] = []
        start = 0
        while start < len(grads):
            end, size = start + 1, sizes[start]
            while end < len(grads) and size + sizes[end] <= limit:
                size += sizes[end]
                end += 1
            if end - start == 1:
                out.append(self(grads[start], pieces))
            else:
                out.extend(self._transform_group(grads[start:end], sizes[start:end], pieces))
            start = end
        return out

    def _transform_group(self, grads, sizes, pieces) -> list[torch.Tensor]:
        """[`transform_many`] on tensors of one dtype and device, with `pieces`, in one score call."""
        total = sum(sizes)
        dtype = self.net[0].weight.dtype
        flat = torch.cat([g.reshape(-1) for g in grads]).to(dtype)
        scores = self._scores(flat.view(-1, 1), pieces).view(-1)
        lengths = torch.tensor(sizes, device=flat.device)
        with torch.no_grad():  # the shift only guards exp() against overflow; the result does not depend on it
            peaks = torch.stack([part.amax() for part in scores.detach().split(sizes)])
        weighted = torch.exp(scores - peaks.repeat_interleave(lengths, output_size=total)) * flat
        norms = torch.stack([_norm_floor(part, self.eps) for part in weighted.split(sizes)])
        out = weighted * (self.c / norms).repeat_interleave(lengths, output_size=total)
        return [part.view_as(g).to(g.dtype) for part, g in zip(out.split(sizes), grads)]

    @torch.no_grad()
    def transform_(self, params: Iterable[torch.Tensor]) -> int:
        """Replace `param.grad` by its transform, in place and without autograd graph. Returns the tensors changed.

        Sharded gradients (DTensors: FSDP2's `fully_shard`, tensor parallelism) are transformed on their local shards
        with the softmax's maximum and the norm `||p * g||` all-reduced over the whole tensor, so the result equals the
        transform of the full gradient.
        """
        grads = [param.grad for param in params if param.grad is not None]
        sharded = [g for g in grads if _is_dtensor(g)]
        if sharded:
            self._transform_sharded_(sharded)
            grads = [g for g in grads if not _is_dtensor(g)]
        # All tensors share one piecewise-linear form: found once per call, not once per tensor.
        for grad, new in zip(grads, self.transform_many(grads)):
            grad.copy_(new)
        return len(grads) + len(sharded)

    def _transform_sharded_(self, grads: list[torch.Tensor]) -> None:
        """[`transform_`] of DTensor gradients: scores on the local shard, per-tensor max and norm all-reduced."""
        import torch.distributed as dist

        pieces = self.fast_pieces(sum(g.numel() for g in grads))
        dtype = self.net[0].weight.dtype
        for grad in grads:
            groups = _shard_groups(grad)
            local = grad.to_local()
            flat = local.reshape(-1).to(dtype)
            if self.softmax_dim == 0:
                scores = self._scores(flat.view(-1, 1), pieces).view(-1)
                peak = scores.amax() if scores.numel() else scores.new_full((), -math.inf)
                for group in groups:
                    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
                weighted = torch.exp(scores - peak) * flat
            else:  # the ablation: softmax over a width-1 axis, p == 1
                weighted = flat
            norm = _norm_floor(weighted, self.eps, groups)
            local.copy_((self.c * weighted / norm).view_as(local).to(local.dtype))


def _norm_floor(x: torch.Tensor, eps: float, groups: Sequence = ()) -> torch.Tensor:
    """`max(||x||, eps)`, the l2 norm taken on `x / max|x|`: in float32 the squares of entries below ~1e-19 underflow,
    so the plain norm of a small, non-zero tensor came out 0 or far too small and `eps` became the divisor (a "norm c"
    update 1e6-1e8 times too large). An all-zero `x` keeps norm 0, hence `eps`. The scale is a constant for autograd
    (the norm's gradient is unchanged). With `groups`, `x` is a local shard: its maximum and sum of squares are
    all-reduced over them, giving the norm of the whole tensor."""
    peak = x.detach().abs().amax() if x.numel() else x.detach().new_zeros(())
    if groups:
        import torch.distributed as dist

        for group in groups:
            dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))
    sq = torch.linalg.vector_norm(x / scale).square()
    for group in groups:
        dist.all_reduce(sq, group=group)
    # sqrt's derivative at 0 is inf, and inf * 0 = NaN: an all-zero tensor (a LoRA A while its B is still 0) made the
    # outer step's amplifier gradient NaN. Its norm is the constant 0 instead (the forward value is unchanged).
    # A NaN norm (a NaN entry, or an inf one: inf/inf) stays NaN: `NaN > 0` is False, so it was taken as an all-zero
    # tensor and floored to `eps`, and `GradNormOptimizer` multiplied the finite entries by c/1e-30 (1e29-sized
    # weights) where the amplifier's transform and the clip turn the tensor NaN.
    nonzero = sq > 0
    root = torch.where(nonzero, torch.where(nonzero, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))
    root = torch.where(torch.isnan(sq), sq, root)
    return (scale * root).clamp_min(eps)


def _shard_groups(t: torch.Tensor) -> list:
    """Process groups of the mesh dimensions that shard the DTensor `t` (a whole-tensor sum is all-reduced over them)."""
    groups = []
    for i, placement in enumerate(t.placements):
        if placement.is_shard():
            groups.append(t.device_mesh.get_group(i))
        elif not placement.is_replicate():
            raise ValueError(
                f"NeuralAmplifier cannot transform a gradient DTensor with placement {placement} (only Shard and "
                "Replicate placements, as FSDP2 and tensor parallelism give)."
            )
    return groups


def _check_gradient(grad, name: str) -> None:
    """`grad` must be a floating-point tensor: an integer one came back as zeros (the transform cast back to its integer
    dtype), a list failed with "'list' object has no attribute 'reshape'"."""
    if not isinstance(grad, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (a gradient), got {type(grad).__name__}.")
    if not grad.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (a gradient), got dtype {grad.dtype}: its transform, of norm c, "
            "would be cast back to that dtype (an integer gradient became all zeros). Convert it first, e.g. "
            "grad.float()."
        )


def _check_pieces(pieces) -> None:
    """`pieces` of [`NeuralAmplifier.probabilities`] / [`NeuralAmplifier.transform_many`]: `"auto"`, `None` or the
    `(knots, slope, intercept)` of [`NeuralAmplifier.fast_pieces`]; any other string acted as `"auto"`, silently."""
    if pieces is None or (isinstance(pieces, str) and pieces == "auto"):
        return
    if isinstance(pieces, tuple) and len(pieces) == 3 and all(isinstance(t, torch.Tensor) for t in pieces):
        return
    shown = repr(pieces) if isinstance(pieces, str | int | float | bool) else f"a {type(pieces).__name__}"
    raise ValueError(
        f"pieces={shown} must be 'auto', None (the direct MLP) or the (knots, slope, intercept) tuple of "
        "amplifier.fast_pieces(num_entries)."
    )


def _is_int(value) -> bool:
    """`value` is an integer (numpy's too) and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_finite(value) -> bool:
    """`value` is a real number (not a bool) in (0, inf)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < math.inf


def _interior_points(knots: torch.Tensor) -> torch.Tensor:
    """One point strictly inside each of the `len(knots) + 1` segments the sorted `knots` define."""
    if knots.numel() == 0:
        return torch.zeros(1, dtype=knots.dtype, device=knots.device)
    left = knots[:1] - knots[:1].abs().clamp_min(1.0)
    right = knots[-1:] + knots[-1:].abs().clamp_min(1.0)
    return torch.cat([left, (knots[:-1] + knots[1:]) / 2, right])


def amplifier_outer_step(
    amplifier: NeuralAmplifier,
    meta_optimizer: torch.optim.Optimizer,
    model: nn.Module,
    inner_batches: Sequence[Mapping[str, torch.Tensor]],
    outer_batches: Sequence[Mapping[str, torch.Tensor]],
    virtual_lr: float,
    loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor] | None = None,
    outer_loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], torch.Tensor]
    | None = None,
    grad_reducer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    g_hat: Sequence[torch.Tensor | None] | None = None,
    g_hat_reducer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    weight_by_tokens: bool = True,
) -> float:
    r"""
    One Learn-Amplifier step: update `amplifier` so that a virtual SGD step with its transformed gradients lowers the
    loss on the outer set. The model is never modified: not its parameters, their `.grad`, nor its buffers (e.g.
    BatchNorm running statistics). Like the reference, which runs this step on a deep copy of the model, every forward
    here (step 1 and the outer batches) runs on one set of clones of the buffers, which those forwards may update
    in train mode (the same clones throughout, as the copy's buffers would be); the real buffers stay bit-identical.

    With the model at theta (after the real optimizer step):

    1. `g_hat = grad L(theta; inner_batches)` (constants),
    2. `theta' = theta.detach() - virtual_lr * G_phi(g_hat)` for every trainable tensor (differentiable in phi),
    3. `L_outer = mean loss of the model at theta'` over all labelled tokens of `outer_batches` (each batch's mean
       loss weighted by its labelled-token count), through `torch.func.functional_call`,
    4. backpropagate into phi only and take a `meta_optimizer` step.

    Step 2 evaluates the amplifier through its exact piecewise-linear form when it pays ([`NeuralAmplifier.fast_pieces`],
    found once for all tensors): the same values and phi-gradients as the MLP, without its per-entry activations.

    Args:
        amplifier ([`NeuralAmplifier`]): the amplifier to train.
        meta_optimizer (`torch.optim.Optimizer`): optimizer over `amplifier.parameters()` only.
        model (`nn.Module`): the (unwrapped) model; its forward returns an output with a `loss` (or pass `loss_fn`).
        inner_batches: the micro-batches of the last inner step; may be empty when `g_hat` is given. `g_hat` is the
            gradient of their loss weighted as the real step weighted it (see `weight_by_tokens`).
        outer_batches: batches of the outer set D_outer; `L_outer` is the mean of their mean losses weighted by
            their labelled next-token counts (`labels[..., 1:] != -100`, as `weight_by_tokens` counts them), i.e. the
            mean loss over all labelled tokens of the outer set, the same however the set is batched; weighted by
            their rows when a batch has no `labels` tensor. A batch without a labelled token is skipped.
        virtual_lr (`float`): step size of the virtual SGD step (the reference uses the base learning rate).
        loss_fn (`Callable`, *optional*): `loss_fn(model, batch) -> scalar`; defaults to `model(**batch).loss`
            evaluated with the cloned buffers (`functional_call(model, buffers, kwargs=batch).loss`). A given
            `loss_fn` calls the real model: buffers it changes are restored afterwards.
        outer_loss_fn (`Callable`, *optional*): `outer_loss_fn(model, params, batch) -> scalar` for the outer loss;
            defaults to `functional_call(model, params, kwargs=batch).loss`. `params` holds the virtual parameters and
            the cloned buffers.
        grad_reducer (`Callable`, *optional*): applied to each amplifier gradient before the meta step (e.g. a mean
            over data-parallel ranks).
        g_hat (sequence of `torch.Tensor` or `None`, *optional*): the gradient to transform in step 2, one entry per
            trainable parameter of `model` in `named_parameters()` order (`None` for a parameter without one). Given,
            step 1 is skipped: no forward or backward of the model on `inner_batches` (used by
            `NeuralGrokConfig.outer_gradient="next_step"`, which passes the gradient a real step has just computed).
        g_hat_reducer (`Callable`, *optional*): applied to each gradient computed in step 1 (e.g. a mean over
            data-parallel ranks, so that every rank transforms the gradient of the whole global batch, as one process
            on that batch does); not applied to a given `g_hat`.
        weight_by_tokens (`bool`, *optional*, defaults to `True`): how step 1 weights the micro-batches' mean
            losses. `True`: by labelled next-token count, `labels[..., 1:] != -100` (`labels != -100` for one label
            per example; equal weights without `labels`, e.g. for a `loss_fn` of other inputs), which averages over all
            their labelled tokens as the Trainer's real step does under gradient accumulation when it passes
            `num_items_in_batch`. `False`: equal weights, as the real step when the Trainer passes none (a model
            without loss kwargs: each micro-batch's mean loss divided by the accumulation steps).
            [`NeuralGrokTrainer`] passes `False` and a `loss_fn` that is its own `compute_loss` with the step's
            `num_items_in_batch`, scaled so that their mean is the real step's loss (label smoothing or a
            `compute_loss_func` included).

    Returns:
        `float`: the outer loss (before the meta step).
    """
    from torch.func import functional_call

    if inner_batches is None and g_hat is not None:  # the given gradient replaces the inner batches (none needed)
        inner_batches = []
    _check_outer_step_arguments(amplifier, meta_optimizer, model, inner_batches, outer_batches, weight_by_tokens)
    if g_hat is None and not inner_batches:
        raise ValueError("inner_batches is empty: the outer step needs the batch of the last inner step (or g_hat).")
    if not outer_batches:
        raise ValueError("outer_batches is empty: pass a non-empty outer dataset (D_outer).")
    if not _positive_finite(virtual_lr):
        raise ValueError(f"virtual_lr={virtual_lr!r} must be a finite number > 0.")
    # Clones of the buffers, shared by every forward of this step as the reference's deep copy shares its own: a
    # train-mode forward (BatchNorm) updates these, never the real model's running statistics or counters.
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    restore_buffers = loss_fn is not None  # a given loss_fn runs the real model: put back what it changes
    if loss_fn is None:

        def loss_fn(m, batch):
            return functional_call(m, buffers, args=(), kwargs=dict(batch)).loss

    if outer_loss_fn is None:

        def outer_loss_fn(m, params, batch):
            return functional_call(m, params, args=(), kwargs=dict(batch)).loss

    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    if any(_is_dtensor(p) for p in params):
        raise ValueError(
            "amplifier_outer_step got a model with sharded (DTensor) parameters, e.g. from FSDP2's `fully_shard`: its "
            "virtual step evaluates the model at theta - lr * G(g_hat) through torch.func.functional_call, which FSDP2's "
            "own parameter all-gather bypasses. Train NeuralGrok (gradient_transform='neuralgrok') with DDP or in one "
            "process; under FSDP2 use gradient_transform='normalize', 'grokfast_ema', 'grokfast_ma' or 'none'."
        )
    _check_meta_optimizer_holds(meta_optimizer, amplifier)  # after the FSDP2 refusal: that one is about the model
    if g_hat is not None:
        g_hat = list(g_hat)
        if len(g_hat) != len(params) or any(g is not None and g.shape != p.shape for g, p in zip(g_hat, params)):
            raise ValueError(
                f"g_hat must hold one gradient (or None) per trainable parameter, shaped like it: got {len(g_hat)} "
                f"entries for {len(params)} parameters."
            )
    else:
        # 1. g_hat at the current parameters, on the last inner batch (no .grad and no buffer is touched).
        try:
            with torch.enable_grad():
                weights = _inner_loss_weights(inner_batches) if weight_by_tokens else [1.0] * len(inner_batches)
                total = sum(weights)
                inner_loss = sum(
                    w / total * _checked_loss(loss_fn(model, b), "inner", i, b, "loss_fn")
                    for i, (w, b) in enumerate(zip(weights, inner_batches))
                    if w
                )
                g_hat = torch.autograd.grad(inner_loss, params, allow_unused=True)
        finally:
            if restore_buffers:  # the outer forwards continue from what step 1 left, on clones; the real ones go back
                with torch.no_grad():
                    for name, buffer in model.named_buffers():
                        if name not in buffers:  # registered by loss_fn itself: not the model's at the start
                            continue
                        changed = buffer.detach().clone()
                        buffer.copy_(buffers[name])
                        buffers[name] = changed
        if g_hat_reducer is not None:
            g_hat = [None if g is None else g_hat_reducer(g) for g in g_hat]
    # 2.-3. virtual step and outer loss, differentiable in phi only.
    amplifier.train()
    meta_optimizer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        # All tensors in one batched call, through the exact piecewise-linear form when it pays (values and
        # phi-gradients equal the MLP's).
        with_grad = [(name, grad.detach()) for name, grad in zip(names, g_hat) if grad is not None]
        transformed = dict(zip([n for n, _ in with_grad], amplifier.transform_many([g for _, g in with_grad])))
        virtual = {}
        for name, param in zip(names, params):
            theta = param.detach()
            virtual[name] = theta - virtual_lr * transformed[name] if name in transformed else theta
        # Each batch's mean loss weighted by its labelled next-token count (its rows without labels): the token mean
        # over the whole outer set, whatever outer_batch_size cuts it into (it was weighted by rows, so rows with
        # different label counts gave another loss, and amplifier, for every batching).
        weights = _outer_loss_weights(outer_batches)
        outer_loss = 0.0
        for i, (weight, batch) in enumerate(zip(weights, outer_batches)):
            if not weight:  # no labelled token: its mean loss is NaN and it has no term in the token mean
                continue
            loss = _checked_loss(
                outer_loss_fn(model, {**virtual, **buffers}, batch), "outer", i, batch, "outer_loss_fn"
            )
            outer_loss = outer_loss + weight * loss
        outer_loss = outer_loss / sum(weights)
        outer_loss.backward()
    if grad_reducer is not None:
        for phi in amplifier.parameters():
            if phi.grad is not None:
                phi.grad.copy_(grad_reducer(phi.grad))
    meta_optimizer.step()
    amplifier.eval()
    return float(outer_loss.detach())


def _check_outer_step_arguments(amplifier, meta_optimizer, model, inner_batches, outer_batches, weight_by_tokens):
    """[`amplifier_outer_step`]'s arguments, refused by name before any work (their types; the meta-optimizer's
    parameters are checked by [`_check_meta_optimizer_holds`]): one batch given as `outer_batches` / `inner_batches`
    (a dict, not a list of them) failed on its keys with "'str' object has no attribute 'get'"."""
    if not isinstance(amplifier, NeuralAmplifier):
        raise TypeError(f"amplifier must be a NeuralAmplifier, got {type(amplifier).__name__}.")
    if not isinstance(meta_optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"meta_optimizer must be a torch.optim.Optimizer over amplifier.parameters(), got "
            f"{type(meta_optimizer).__name__}."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameter (requires_grad=True): there is nothing to transform.")
    for name, batches in (("inner_batches", inner_batches), ("outer_batches", outer_batches)):
        if isinstance(batches, Mapping) or not isinstance(batches, Sequence) or isinstance(batches, str | bytes):
            hint = f": pass a list of batches, e.g. [{name[:5]}_batch]" if isinstance(batches, Mapping) else ""
            raise TypeError(
                f"{name} must be a sequence (e.g. a list) of batches, each a dict of tensors; got "
                f"{type(batches).__name__}{hint}."
            )
        for i, batch in enumerate(batches):
            if not isinstance(batch, Mapping):
                raise TypeError(f"{name}[{i}] must be a batch, a dict of tensors; got {type(batch).__name__}.")
    if not is_bool(weight_by_tokens):
        raise TypeError(f"weight_by_tokens={weight_by_tokens!r} must be a bool (True or False).")


def _check_meta_optimizer_holds(meta_optimizer: torch.optim.Optimizer, amplifier: NeuralAmplifier) -> None:
    """The meta-optimizer must hold every trainable parameter of the amplifier (others may be there too): one built
    over the model's parameters skipped them all and left the amplifier untrained, silently."""
    held = {id(p) for group in meta_optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in amplifier.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        raise ValueError(
            f"meta_optimizer does not hold the amplifier's parameters {missing}: its step would leave the amplifier "
            "untrained. Build it over the amplifier, e.g. torch.optim.Adam(amplifier.parameters(), lr=1e-4)."
        )


def _checked_loss(loss, kind: str, index: int, batch: Mapping, fn_name: str) -> torch.Tensor:
    """`loss` if it is a scalar tensor; else a `ValueError` naming the batch and what it lacks (a model returns no
    `loss` without `labels`: the product with it failed as an unnamed `TypeError`)."""
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss.reshape(())
    keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
    hint = (
        "the model returns a loss only when the batch has `labels`: give the batches labels (an outer set with the "
        "training set's columns)"
        if "labels" not in (batch if isinstance(batch, Mapping) else {})
        else f"pass a {fn_name} that returns the batch's scalar loss"
    )
    raise ValueError(
        f"{kind} batch {index} (keys {keys}) gave no scalar loss ({fn_name} returned "
        f"{type(loss).__name__ if not isinstance(loss, torch.Tensor) else f'a tensor of shape {tuple(loss.shape)}'}): "
        f"{hint}."
    )


def _label_counts(batches: Sequence[Mapping[str, torch.Tensor]]) -> list[float] | None:
    """Labelled next-token count of each batch, `labels[..., 1:] != -100` (`labels != -100` for one label per
    example): the terms of a causal LM's mean loss, what the Trainer's `num_items_in_batch` counts. `None` when a batch
    has no `labels` tensor or none has a labelled token."""
    counts = []
    for batch in batches:
        labels = batch.get("labels")
        if not isinstance(labels, torch.Tensor):
            return None
        counted = labels[..., 1:] if labels.dim() > 1 else labels
        counts.append(float((counted != -100).sum()))
    return counts if sum(counts) > 0 else None


def _inner_loss_weights(batches: Sequence[Mapping[str, torch.Tensor]]) -> list[float]:
    """Weight of each inner micro-batch's mean loss in `g_hat`: its labelled next-token count ([`_label_counts`]), so
    that micro-batches of different sizes give the gradient of one batch of all their examples (a micro-batch without a
    labelled token, whose mean loss is NaN, gets 0). Equal weights when a batch has no `labels` tensor or none has a
    labelled token."""
    counts = _label_counts(batches)
    return counts if counts is not None else [1.0] * len(batches)


def _outer_loss_weights(batches: Sequence[Mapping[str, torch.Tensor]]) -> list[float]:
    """Weight of each outer batch's mean loss in `L_outer`: its labelled next-token count ([`_label_counts`]), so that
    `L_outer` is the mean over all labelled tokens of the outer set however it is batched (a batch without a labelled
    token gets 0). The number of rows when a batch has no `labels` tensor or none has a labelled token (one term per
    example, e.g. for an `outer_loss_fn` of other inputs). One label per row, as in the arithmetic data, gives the
    same weights both ways."""
    counts = _label_counts(batches)
    return counts if counts is not None else [float(_batch_size(batch)) for batch in batches]


def _batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError("Cannot infer the batch size: no tensor with a batch dimension in the outer batch.")
