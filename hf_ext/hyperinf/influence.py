"""Streaming influence engine over batches of rank-first gradients: HyperINF and its baselines behind one interface.

The engine never holds an `n x P` gradient matrix. It consumes *gradient sources*: zero-argument callables that
return a fresh iterator of `{name: (B, r, d) tensor}` batches (per-example gradients of the training set) on every
call, or lists/tuples of such batches (an iterator, read once only, is refused). Per layer
it keeps only `d x d` (HyperINF, exact-GFIM), `rd x rd` (exact-FIM, small models only) or `r x d` (DataInf, LiSSA,
TracIn) state.

Influence of train example `k` on the validation loss (positive = harmful, as in the reference):

    I(z_k) = - sum_l < hvp_l , g_{l,k} >,   hvp_l ~ v_l (G_l + lambda_l I)^-1  (HyperINF)

Data-parallel: with a `process_group`, each process feeds the engine its own part of the training and evaluation
gradients; the sums over examples (statistics, curvature, the validation mean, DataInf's and LiSSA's passes) are
all-reduced in float64 and the scores of the parts all-gathered in rank order (see `InfluenceEngine`).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..utils.checks import is_int as _is_int
from ..utils.checks import is_real as _is_real
from ..utils.checks import store_python_scalars
from .linalg import (
    SchulzConvergenceWarning,
    SchulzDivergenceError,
    lissa_step,
    schulz_divergence_message,
    schulz_inverse,
    schulz_warning_message,
)

METHODS = ("hyperinf", "datainf", "lissa", "tracin", "exact")
GradientBatches = Iterable[Mapping[str, torch.Tensor]]
GradientSource = Callable[[], GradientBatches]

_SOURCE_CONTRACT = (
    "a zero-argument callable returning a fresh iterator of {name: (B, r, d) tensor} batches on every call (the "
    "training gradients are read again by `scores`: DataInf twice, LiSSA `lissa_iterations + 1` times), or a list or "
    "tuple of such batches"
)


def as_gradient_source(source, argument: str) -> GradientSource:
    """`source` as a gradient source: a callable is kept, a list or tuple of batches is read afresh on every call; an
    iterator or generator (read once only) and anything else are a `TypeError` naming `argument` and the contract."""
    if callable(source):
        return source
    if isinstance(source, (list, tuple)):
        return lambda: iter(source)
    if isinstance(source, Iterator):
        raise TypeError(
            f"`{argument}` must be a gradient source: {_SOURCE_CONTRACT}. Got a {type(source).__name__}, an iterator "
            "that can be read once only; pass a list of the batches, or a function that makes a new iterator, e.g. "
            "`lambda: make_batches()`."
        )
    raise TypeError(f"`{argument}` must be a gradient source: {_SOURCE_CONTRACT}. Got a {type(source).__name__}.")


def _open_source(source: GradientSource, argument: str) -> Iterator[Mapping[str, torch.Tensor]]:
    batches = source()
    try:
        return iter(batches)
    except TypeError:
        raise TypeError(
            f"`{argument}` returned a {type(batches).__name__}, not an iterable of gradient batches; a gradient "
            f"source is {_SOURCE_CONTRACT}."
        ) from None


# Float options of `InfluenceConfig` -> whether `None` is allowed.
_NUMBER_FIELDS = {
    "damping_scale": False,
    "damping": True,
    "schulz_alpha": True,
    "schulz_tol": True,
    "schulz_extra_damping": False,
    "lissa_scale": True,
}


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_stacklevel() -> int:
    """The `stacklevel` for a warning raised by the function calling this one that names the first frame outside
    hf_ext.hyperinf: the user's line whether they call the engine directly or through `InfluenceEstimator` (as
    Python 3.12's `skip_file_prefixes`; this package supports 3.11)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _is_allocation_failure(err: BaseException) -> bool:
    """Whether `err` is an allocator's out-of-memory error (CUDA's `torch.OutOfMemoryError`, the CPU allocator's
    `RuntimeError`), not another error that a tensor allocation can surface (e.g. an earlier asynchronous CUDA error).
    The CPU allocator says "can't allocate memory" where it uses posix_memalign (Linux, macOS) and "not enough memory"
    in its Windows (and Android) builds."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    message = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        words in message for words in ("can't allocate memory", "not enough memory", "out of memory")
    )


@dataclass
class InfluenceConfig:
    """Options of the influence methods (shared by `InfluenceEstimator` and `influence_from_gradients`).

    Args:
        method (`str`, *optional*, defaults to `"hyperinf"`): one of `"hyperinf"` (Schulz's iteration on the
            damped generalized Fisher matrix), `"datainf"` (DataInf's closed form), `"lissa"` (damped, scaled
            LiSSA/Neumann series on the empirical Fisher), `"tracin"` (no curvature: `-<v, g_k>`) and `"exact"`
            (direct solve; small models).
        damping_scale (`float`, *optional*, defaults to 0.1): per-layer damping `lambda_l = damping_scale *
            mean_i mean(g_{l,i}^2)` (DataInf's rule, also used by HyperINF).
        damping (`float`, *optional*): a fixed damping for every layer instead of the per-layer rule. `damping`,
            `damping_scale` and `schulz_extra_damping` must be finite; every method but `"tracin"` inverts the damped
            curvature and refuses a zero damping at construction (HyperINF: unless `schulz_extra_damping > 0`).
        schulz_iterations (`int`, *optional*, defaults to 100): maximum Schulz iterations (the reference runs a fixed
            30 for mislabeled-data detection and 15 for data selection).
        schulz_init (`str`, *optional*, defaults to `"frobenius"`): `"frobenius"` (`X_0 = I / ||A||_F`,
            convergent for the symmetric positive-definite damped GFIM, after about `log2(cond(A))` iterations),
            `"transpose"` (`X_0 = alpha A^T`, `alpha = 1/(||A||_1 ||A||_inf)`, convergent for any non-singular
            matrix but after about `log2(cond(A)^2)` iterations) or `"identity"` (`X_0 = alpha I`, the reference's
            `alpha = 5e-5` unless `schulz_alpha` is set; converges only when `alpha * mu_max < 2`).
        schulz_alpha (`float`, *optional*): scale of the initial guess, overriding the default of `schulz_init`.
        schulz_tol (`float`, *optional*, defaults to 1e-6): stop once `||I - A X||_F / sqrt(d)` falls below it
            (converged). A layer that stops without reaching it (iteration budget spent, or the residual stopped
            decreasing at the dtype's rounding floor) is reported with `schulz_converged=False` and a
            `SchulzConvergenceWarning`. `None` runs exactly `schulz_iterations` (the reference's behaviour) and
            never claims convergence. Whatever the tolerance, a diverging iteration (`alpha * mu_max >= 2`, e.g.
            `schulz_init="identity"` on a layer with `mu_max >= 4e4`) raises `SchulzDivergenceError` in `fit`.
        schulz_order (`int`, *optional*, defaults to 2): hyperpower order (2 = Newton-Schulz, 3 = cubic).
        schulz_extra_damping (`float`, *optional*, defaults to 0.0): extra `c I` added before inversion (the
            reference adds 1e-3 in mislabeled-data detection and 0 in data selection).
        schulz_dtype (`torch.dtype`, *optional*, defaults to `torch.float64`): dtype of the Schulz inversion and of
            the stored inverse (`None`: `dtype`). The damped GFIM of a layer with one dominant gradient direction
            has a condition number of about `r d / damping_scale` (8e4 at `r=16, d=512`); float32 cannot
            represent the progress of the small-eigenvalue directions and stalls far from the inverse.
        lissa_iterations (`int`, *optional*, defaults to 10): LiSSA recursion depth (one pass over the training set
            each).
        lissa_scale (`float`, *optional*): LiSSA scale `s`; default per layer `tr(F_l) + lambda_l`, an upper bound of
            the largest eigenvalue that guarantees convergence.
        exact_curvature (`str`, *optional*, defaults to `"gfim"`): what `"exact"` inverts: `"gfim"` (the `d x d`
            generalized Fisher, the exact counterpart of HyperINF) or `"fim"` (the full `rd x rd` empirical Fisher,
            the reference's `accurate` method).
        max_exact_dim (`int`, *optional*, defaults to 4096): refuse `"exact"` when a matrix to invert would be larger.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of the per-example gradients, of the
            accumulated statistics and of the returned scores; the sums over examples (curvature, mean evaluation
            gradient, DataInf's and LiSSA's passes) are accumulated in at least float32
            (`InfluenceEngine.accumulate_dtype`: a half-precision sum stops growing after 2^8 to 2^11 terms).
            `"exact"` needs float32 or float64 (torch's Cholesky has no half-precision
            kernels; a half `dtype` is refused at construction).
    """

    method: str = "hyperinf"
    damping_scale: float = 0.1
    damping: float | None = None
    schulz_iterations: int = 100
    schulz_init: str = "frobenius"
    schulz_alpha: float | None = None
    schulz_tol: float | None = 1e-6
    schulz_order: int = 2
    schulz_extra_damping: float = 0.0
    schulz_dtype: torch.dtype | None = torch.float64
    lissa_iterations: int = 10
    lissa_scale: float | None = None
    exact_curvature: str = "gfim"
    max_exact_dim: int = 4096
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        store_python_scalars(self)  # numpy numbers as the Python ones (`validate` checks them)

    def validate(self) -> None:
        from .linalg import SCHULZ_INITS

        store_python_scalars(self)  # also for values set after construction

        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {self.method!r}.")
        for name, optional in _NUMBER_FIELDS.items():
            value = getattr(self, name)
            if (value is None and not optional) or (value is not None and not _is_real(value)):
                raise TypeError(f"`{name}` must be a number{' or None' if optional else ''}, got {value!r}.")
        for name in ("schulz_iterations", "schulz_order", "lissa_iterations", "max_exact_dim"):
            if isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be an int, got {getattr(self, name)!r}.")
        if not (self.damping_scale >= 0 and math.isfinite(self.damping_scale)):
            raise ValueError(f"`damping_scale` must be finite and >= 0, got {self.damping_scale!r}.")
        if self.damping is not None and not (self.damping >= 0 and math.isfinite(self.damping)):
            raise ValueError(f"`damping` must be finite and >= 0, or None, got {self.damping!r}.")
        if not (self.schulz_extra_damping >= 0 and math.isfinite(self.schulz_extra_damping)):
            raise ValueError(f"`schulz_extra_damping` must be finite and >= 0, got {self.schulz_extra_damping!r}.")
        damping = self.damping if self.damping is not None else self.damping_scale
        if self.method == "hyperinf":
            damping += self.schulz_extra_damping
        if self.method != "tracin" and damping == 0:
            which = "`damping`" if self.damping is not None else "`damping_scale`"
            raise ValueError(
                f"method={self.method!r} inverts the damped curvature and needs a positive damping, but {which} is 0 "
                "(the undamped curvature is singular as soon as there are fewer examples than dimensions). Pass a "
                "positive `damping_scale` (default 0.1) or `damping`, or use method='tracin' (no curvature)."
            )
        if not _is_int(self.schulz_iterations) or self.schulz_iterations < 0:
            raise ValueError(f"`schulz_iterations` must be a non-negative int, got {self.schulz_iterations!r}.")
        if self.schulz_init not in SCHULZ_INITS:
            raise ValueError(f"`schulz_init` must be one of {SCHULZ_INITS}, got {self.schulz_init!r}.")
        if self.schulz_alpha is not None and not 0 < self.schulz_alpha < math.inf:
            raise ValueError(f"`schulz_alpha` must be a finite positive number or None, got {self.schulz_alpha!r}.")
        if self.schulz_tol is not None and not 0 < self.schulz_tol < 1:
            raise ValueError(
                f"`schulz_tol` must lie in (0, 1) or be None, got {self.schulz_tol!r}: it bounds the residual "
                "||I - A X||_F / sqrt(d), and a residual of 1 or more means no inverse at all (a tolerance that large "
                "would stop at the initial guess and report it as converged)."
            )
        if self.schulz_order not in (2, 3):
            raise ValueError(f"`schulz_order` must be 2 or 3, got {self.schulz_order!r}.")
        if not _is_int(self.lissa_iterations) or self.lissa_iterations < 1:
            raise ValueError(f"`lissa_iterations` must be a positive int, got {self.lissa_iterations!r}.")
        if self.lissa_scale is not None and not 0 < self.lissa_scale < math.inf:
            raise ValueError(f"`lissa_scale` must be a finite positive number or None, got {self.lissa_scale!r}.")
        if not _is_int(self.max_exact_dim) or self.max_exact_dim < 1:
            raise ValueError(
                f"`max_exact_dim` must be a positive int (the largest matrix side method='exact' may invert, default "
                f"4096), got {self.max_exact_dim!r}."
            )
        if self.exact_curvature not in ("gfim", "fim"):
            raise ValueError(f"`exact_curvature` must be 'gfim' or 'fim', got {self.exact_curvature!r}.")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise TypeError(f"`dtype` must be a floating torch.dtype, got {self.dtype!r}.")
        if self.method == "exact" and self.dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"method='exact' needs `dtype` torch.float32 or torch.float64, got {self.dtype}: it factors the damped "
                "curvature with a Cholesky decomposition, which torch implements in those dtypes only (it used to fail "
                "after the whole gradient pass). Pass dtype=torch.float32 (the default; the per-example gradients of a "
                "half-precision model are cast to it) or torch.float64, or use method='hyperinf' (it inverts in "
                "`schulz_dtype`, float64 by default)."
            )
        if self.schulz_dtype is not None and (
            not isinstance(self.schulz_dtype, torch.dtype) or not self.schulz_dtype.is_floating_point
        ):
            raise TypeError(f"`schulz_dtype` must be a floating torch.dtype or None, got {self.schulz_dtype!r}.")

    def curvature_dim(self, shape: tuple[int, int]) -> int:
        """Size of the matrix the method builds for a layer of rank-first shape `shape` (0: none)."""
        if self.method == "hyperinf" or (self.method == "exact" and self.exact_curvature == "gfim"):
            return shape[1]
        if self.method == "exact":
            return shape[0] * shape[1]
        return 0


@dataclass
class LayerState:
    """Per-layer statistics and the fitted solver of one tracked matrix."""

    shape: tuple[int, int]
    sum_mean_sq: float = 0.0
    sum_sq_norm: float = 0.0
    curvature: torch.Tensor | None = None
    damping: float = 0.0
    solver: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


class InfluenceEngine:
    """Fits per-layer curvature from a gradient source and turns validation gradients into influence scores.

    Args:
        config (`InfluenceConfig`): the method and its options.
        shapes (`dict[str, tuple[int, int]]`): rank-first shape of each tracked matrix.
        device (`torch.device`, *optional*): where the statistics live (default: CPU).
        process_group (`torch.distributed.ProcessGroup`, *optional*): run data-parallel over this group (e.g.
            `torch.distributed.group.WORLD`; it must be initialized). Every process of the group then passes `fit`
            and `scores` the gradients of *its own part* of the training and of the evaluation set (parts may differ
            in size, be empty, and together must hold each example once; the training parts in rank order give the
            order of the scores). The example counts and per-layer sums (damping statistics, curvature, which layers
            have a non-zero gradient, the validation gradient sum, DataInf's and LiSSA's passes over the training
            gradients) are all-reduced in float64 before they are used, so every process fits the same solvers;
            `scores` all-gathers the parts' scores and returns all of them, in rank order, on every process. An
            error in one process's part of a pass (a bad batch) is raised on every process (the others name its
            rank) instead of leaving them waiting in the next collective. The collectives' tensors live on
            `device`, which the group's backend must support (gloo: CPU; NCCL: the process's GPU).
    """

    def __init__(
        self,
        config: InfluenceConfig,
        shapes: Mapping[str, tuple[int, int]],
        device: torch.device | None = None,
        process_group=None,
    ):
        if not isinstance(config, InfluenceConfig):
            raise TypeError(f"`config` must be an InfluenceConfig, got {type(config).__name__}.")
        config.validate()
        if not isinstance(shapes, Mapping):
            raise TypeError(f"`shapes` must be a mapping {{name: (r, d)}}, got {type(shapes).__name__}.")
        if not shapes:
            raise ValueError("`shapes` is empty: there is no tracked matrix to compute influence over.")
        for name, shape in shapes.items():
            # a 1-D shape failed with an IndexError, a zero or negative size was accepted until the first batch
            if not (
                isinstance(shape, (tuple, list, torch.Size))
                and len(shape) == 2
                and all(_is_int(size) and size > 0 for size in shape)
            ):
                raise ValueError(
                    f"`shapes[{name!r}]` must be the rank-first `(r, d)` shape of one example's gradient, two positive "
                    f"ints, got {shape!r}."
                )
        if process_group is not None and not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "`process_group` was given but torch.distributed is not initialized in this process: call "
                "`torch.distributed.init_process_group` first (torchrun / accelerate launch set it up), or pass "
                "process_group=None to run in this process alone."
            )
        self.process_group = process_group
        self.config = config
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.shapes = {name: (int(shape[0]), int(shape[1])) for name, shape in shapes.items()}
        biggest = max(config.curvature_dim(s) for s in self.shapes.values())
        if config.method == "exact" and biggest > config.max_exact_dim:
            raise ValueError(
                f"method='exact' with exact_curvature={config.exact_curvature!r} would invert a {biggest} x {biggest} "
                f"matrix, above max_exact_dim={config.max_exact_dim}. Use method='hyperinf' (or raise "
                "`max_exact_dim`"
                + (
                    ", or exact_curvature='gfim', which inverts one factor's side only)."
                    if config.exact_curvature != "gfim"
                    else ")."
                )
            )
        self.layers: dict[str, LayerState] = {}
        self.active: list[str] = []  # the layers `fit` found a non-zero gradient for (the others add 0 to scores)
        self.num_train = 0  # all processes' training examples together
        self.num_local_train = 0  # this process's (== num_train without a process group)
        self.train_source: GradientSource | None = None
        self.timings: dict[str, float] = {}

    @property
    def accumulate_dtype(self) -> torch.dtype:
        """The dtype of the sums over examples (curvature, mean evaluation gradient, DataInf's and LiSSA's passes) and
        of the per-example dot products: `config.dtype`, but at least float32. A half-precision `dtype` (bfloat16 keeps
        8 significant bits) used to accumulate them in that dtype too: once a sum is 2^8 times an example's term the
        term rounds away, so on a few thousand examples the GFIM, and the HyperINF scores, were off by half (the
        per-example gradients and the returned scores stay in `config.dtype`)."""
        return torch.promote_types(self.config.dtype, torch.float32)

    # ------------------------------------------------------------ collectives
    @property
    def world_size(self) -> int:
        """Processes of `process_group` (1 without one)."""
        return 1 if self.process_group is None else dist.get_world_size(self.process_group)

    @property
    def rank(self) -> int:
        """This process's rank in `process_group` (0 without one)."""
        return 0 if self.process_group is None else dist.get_rank(self.process_group)

    def run_collectively(self, work: Callable[[], object], what: str):
        """`work()`, this process's share of a step whose next collective every process must reach; with a process
        group, whether it failed is exchanged first, so that an error in one process raises on every process (that
        process's own error there, a `RuntimeError` naming the failed rank elsewhere) instead of a hang."""
        if self.process_group is None:
            return work()
        error, result = None, None
        try:
            result = work()
        except Exception as err:
            error = err
        world = self.world_size
        flag = torch.tensor([0 if error is None else world - self.rank], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.process_group)
        if error is not None:
            raise error
        if int(flag):
            failed = world - int(flag)
            raise RuntimeError(
                f"{what} failed on rank {failed} of the process group (its error is in that process's output); every "
                "rank stops with it."
            )
        return result

    def _sum(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """The element-wise sums of `values` over the process group, all-reduced in float64 (each back in its own
        dtype); `values` unchanged without a group."""
        if self.process_group is None or not values:
            return values
        flat = torch.cat([v.reshape(-1).to(device=self.device, dtype=torch.float64) for v in values])
        dist.all_reduce(flat, group=self.process_group)
        out, start = [], 0
        for v in values:
            out.append(flat[start : start + v.numel()].reshape(v.shape).to(v.dtype))
            start += v.numel()
        return out

    def _gather(self, part: torch.Tensor) -> torch.Tensor:
        """The 1-D `part`s of every process, concatenated in rank order (they may differ in length)."""
        if self.process_group is None:
            return part
        world = self.world_size
        size = torch.tensor([part.numel()], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=self.process_group)
        sizes = [int(s) for s in sizes]
        longest = max(sizes)
        padded = torch.zeros(longest, dtype=torch.float64, device=self.device)  # any score dtype, on any backend
        padded[: part.numel()] = part.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=self.process_group)
        return torch.cat([p[:k] for p, k in zip(parts, sizes)]).to(part.dtype)

    @property
    def skipped_layers(self) -> list[str]:
        """The tracked matrices the last `fit` left out: their gradient is zero for every training example, so they
        add exactly 0 to every score whatever their curvature (a module whose output does not reach the loss)."""
        return [name for name in self.layers if name not in self.active]

    # ------------------------------------------------------------------ fit
    def _check_batch(self, batch: Mapping[str, torch.Tensor]) -> int:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"A gradient batch must be a mapping {{name: (B, r, d) tensor}}, got a {type(batch).__name__}."
            )
        missing = set(self.shapes) - set(batch)
        if missing:
            raise ValueError(f"A gradient batch lacks tracked matrices {sorted(missing)[:3]}.")
        sizes = set()
        for name, shape in self.shapes.items():
            grads = batch[name]
            if not isinstance(grads, torch.Tensor):
                raise TypeError(f"Gradients of {name!r} must be a torch.Tensor, got a {type(grads).__name__}.")
            if grads.ndim != 3 or tuple(grads.shape[1:]) != tuple(shape):
                raise ValueError(
                    f"Gradients of {name!r} must have shape (B, {shape[0]}, {shape[1]}), got {tuple(grads.shape)}."
                )
            if not bool(torch.isfinite(grads).all()):
                raise ValueError(
                    f"Gradients of {name!r} hold NaN or inf: the model or its adapter holds non-finite values (a "
                    "diverged fine-tune?) or the loss overflowed (float16?); every influence score would be NaN."
                )
            sizes.add(grads.shape[0])
        if len(sizes) != 1:
            raise ValueError(f"All tracked matrices of a batch must have the same batch size, got {sorted(sizes)}.")
        return sizes.pop()

    def fit(self, train_source: GradientSource) -> InfluenceEngine:
        """One pass over the training gradients: damping statistics and, where needed, the curvature to invert.

        `train_source` is a zero-argument callable returning a fresh iterator of `{name: (B, r, d) tensor}` batches on
        every call, or a list or tuple of batches: `scores` reads the training gradients again, in the same order,
        and refuses a pass that yields another number of examples than `fit` counted (e.g. a callable returning the
        same, exhausted, generator again). An iterator is refused (it can be read once only).

        A tracked matrix whose gradient is zero for every training example adds exactly 0 to every score (`<hvp_l,
        g_{l,k}> = 0` for all `k`) and is left out with a `UserWarning` naming it (`skipped_layers`); its curvature
        and damping are not computed, and the other layers' are as without it. A `ValueError` when every tracked
        matrix is zero (an adapter off the loss path, or untrained).
        """
        cfg = self.config
        train_source = self.run_collectively(
            lambda: as_gradient_source(train_source, "train_source"), "Checking `train_source`"
        )
        start = time.perf_counter()
        layers = {name: LayerState(shape=shape) for name, shape in self.shapes.items()}
        for name, layer in layers.items():
            dim = cfg.curvature_dim(layer.shape)
            if dim:
                try:
                    layer.curvature = torch.zeros(dim, dim, dtype=self.accumulate_dtype, device=self.device)
                except RuntimeError as err:  # the allocator's error (torch.OutOfMemoryError is one) named no layer
                    if not _is_allocation_failure(err):
                        raise  # e.g. an earlier asynchronous CUDA error surfacing here: not this matrix's size
                    raise MemoryError(self._curvature_memory_message(name, dim)) from err
        use_fim = cfg.method == "exact" and cfg.exact_curvature == "fim"
        nonzero = dict.fromkeys(layers, False)

        def local_pass() -> int:
            n = 0
            for batch in _open_source(train_source, "train_source"):
                n += self._check_batch(batch)
                for name, layer in layers.items():
                    g = batch[name].to(device=self.device, dtype=self.accumulate_dtype)
                    if not nonzero[name]:
                        nonzero[name] = bool(g.any())
                    sq = g.square().flatten(1).sum(dim=1)
                    layer.sum_sq_norm += float(sq.sum())
                    layer.sum_mean_sq += float(sq.sum()) / (layer.shape[0] * layer.shape[1])
                    if layer.curvature is not None:
                        if use_fim:
                            flat = g.flatten(1)
                            layer.curvature.add_(flat.T @ flat)
                        else:
                            layer.curvature.add_(torch.einsum("bri,brj->ij", g, g))
            return n

        n = local_n = self.run_collectively(local_pass, "The pass over the training gradients of `fit`")
        if self.process_group is not None:
            # one float64 all-reduce: the example count, per layer the two damping sums and the non-zero flag, then
            # the curvatures; every rank then holds the same totals and fits the same solvers
            names = list(layers)
            stats = torch.tensor(
                [float(local_n)]
                + [
                    v
                    for name in names
                    for v in (layers[name].sum_sq_norm, layers[name].sum_mean_sq, float(nonzero[name]))
                ],
                dtype=torch.float64,
            )
            with_curvature = [name for name in names if layers[name].curvature is not None]
            stats, *curvatures = self._sum([stats] + [layers[name].curvature for name in with_curvature])
            stats = stats.tolist()
            n = round(stats[0])
            for i, name in enumerate(names):
                layers[name].sum_sq_norm, layers[name].sum_mean_sq = stats[1 + 3 * i], stats[2 + 3 * i]
                nonzero[name] = stats[3 + 3 * i] > 0
            for name, curvature in zip(with_curvature, curvatures):
                layers[name].curvature = curvature
        if n == 0:
            raise ValueError("The training set is empty: pass at least one example to `fit`.")
        skipped = [name for name in layers if not nonzero[name]]
        if len(skipped) == len(layers):
            raise ValueError(
                f"The gradients of every tracked matrix ({len(layers)}) are zero for every training example, so every "
                f"influence score would be 0{'' if cfg.method == 'tracin' else ' and the damped curvature is 0'}: the "
                "adapter does not reach the loss (inactive or disabled?) or is untrained (peft initialises LoRA B to "
                "zero)."
            )
        if skipped:
            shown = ", ".join(repr(name) for name in skipped[:6]) + (
                f" and {len(skipped) - 6} more" if len(skipped) > 6 else ""
            )
            warnings.warn(
                f"{len(skipped)} of the {len(layers)} tracked matrices get a zero gradient from every training "
                f"example and are left out of the scores (each would add exactly 0 to every score): {shown}. Their "
                "module's output does not reach the loss (e.g. a LoRA on LLaVA's last vision layer, unused with "
                "vision_feature_layer=-2; narrow `target_modules` to silence this) or, for a lora_A matrix, its "
                "lora_B is still zero (an untrained module?). The list is in `skipped_layers` (`layer_info[name]"
                "['skipped']`).",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )
        for name, layer in layers.items():
            if not nonzero[name]:
                layer.info["skipped"] = True  # no solver: `inverse_hvp` and `scores_from_hvp` leave it out
                layer.curvature = None
                continue
            mean_sq = layer.sum_mean_sq / n
            layer.damping = cfg.damping if cfg.damping is not None else cfg.damping_scale * mean_sq
            layer.info["damping"] = layer.damping
            if (
                cfg.method != "tracin"
                and not layer.damping + (cfg.schulz_extra_damping if cfg.method == "hyperinf" else 0) > 0
            ):
                raise ValueError(
                    f"method={cfg.method!r} needs a positive damping, but layer {name!r} got {layer.damping}: its "
                    f"gradients are not all zero, but their squares underflow in dtype={self.accumulate_dtype}; pass "
                    "dtype=torch.float64 or a fixed `damping`."
                )
            if layer.curvature is not None:
                layer.curvature.div_(n)
                if not bool(torch.isfinite(layer.curvature).all()):  # the gradients are finite: a sum overflowed
                    raise ValueError(
                        f"The curvature of layer {name!r} overflowed in dtype={self.accumulate_dtype} (its gradients are finite, "
                        f"but the sum of their products is not; it used to be reported as a Schulz divergence whose "
                        f"fix was another start). Pass dtype=torch.float64."
                    )
                try:
                    self._fit_solver(name, layer)
                except RuntimeError as err:
                    if not _is_allocation_failure(err):
                        raise
                    raise MemoryError(self._solver_memory_message(name, layer.curvature.shape[0])) from err
                layer.curvature = None
        self.layers = layers
        self.active = [name for name in layers if nonzero[name]]
        self.num_train = n
        self.num_local_train = local_n
        self.train_source = train_source
        self.timings["fit_s"] = time.perf_counter() - start
        return self

    def _fit_solver(self, name: str, layer: LayerState) -> None:
        """Factor (method='exact') or invert (method='hyperinf') one layer's damped curvature into `layer.solver`."""
        cfg = self.config
        eye = torch.eye(layer.curvature.shape[0], dtype=layer.curvature.dtype, device=self.device)
        if cfg.method == "hyperinf":
            matrix = layer.curvature + (layer.damping + cfg.schulz_extra_damping) * eye
            largest = float(matrix.abs().max())
            matrix = matrix.to(cfg.schulz_dtype or cfg.dtype)
            if not bool(torch.isfinite(matrix).all()):  # the curvature is finite: past schulz_dtype's range
                raise ValueError(
                    f"The damped curvature of layer {name!r} (largest entry {largest:.4g}) overflows "
                    f"schulz_dtype={matrix.dtype}, the dtype of its Schulz inversion. Pass "
                    "schulz_dtype=torch.float64 (the default) or torch.float32."
                )
            try:
                inverse, info = schulz_inverse(
                    matrix,
                    num_iterations=cfg.schulz_iterations,
                    init=cfg.schulz_init,
                    alpha=cfg.schulz_alpha,
                    tol=cfg.schulz_tol,
                    order=cfg.schulz_order,
                    warn=False,
                )
            except SchulzDivergenceError as err:
                safe = float(1.0 / torch.linalg.matrix_norm(matrix))
                message = schulz_divergence_message(err.info, matrix.dtype, f" for layer {name!r}", safe)
                raise SchulzDivergenceError(message, err.info) from None
            layer.solver = inverse
            layer.info.update(
                schulz_alpha=info.alpha,
                schulz_iterations=info.iterations,
                schulz_residual=info.final_residual,
                schulz_converged=info.converged,
            )
            if cfg.schulz_tol is not None and not info.converged:
                warnings.warn(
                    schulz_warning_message(info, cfg.schulz_tol, inverse.dtype, f" for layer {name!r}"),
                    SchulzConvergenceWarning,
                    stacklevel=_user_stacklevel(),
                )
        else:
            matrix = layer.curvature + layer.damping * eye
            try:
                layer.solver = torch.linalg.cholesky(matrix)
            except torch.linalg.LinAlgError as err:
                raise ValueError(
                    f"The damped curvature of {name!r} is not positive definite (damping "
                    f"{layer.damping:.3g}); raise `damping_scale` or pass `damping`."
                ) from err

    def _solver_memory_message(self, name: str, dim: int) -> str:
        """The error for a solver that cannot be fitted for lack of memory (the curvature itself was allocated)."""
        cfg = self.config
        if cfg.method == "hyperinf":
            dtype = cfg.schulz_dtype or cfg.dtype
            size = dim * dim * torch.empty(0, dtype=dtype).element_size() / 2**30
            work = (
                f"its Schulz inversion in schulz_dtype={dtype} keeps about six {dim} x {dim} matrices at once "
                f"({size:.3g} GiB each) beside the curvature"
            )
            # float32 halves a float64 inversion; one already in float32 (or narrower) has no cheaper dtype to name
            wide = torch.empty(0, dtype=dtype).element_size() > 4
            fix = "pass schulz_dtype=torch.float32 (half the memory of float64), " if wide else ""
        else:
            work = f"its Cholesky factorisation keeps three more {dim} x {dim} matrices in {self.accumulate_dtype}"
            fix = ""
        return (
            f"Out of memory while fitting the solver of layer {name!r} on {self.device}: {work}. To fit it, {fix}"
            "leave the largest modules out of `target_modules`, use a method whose per-layer state is r x d "
            "(method='datainf', 'lissa' or 'tracin'), or a device with more memory (`device=`)."
        )

    def _curvature_memory_message(self, name: str, dim: int) -> str:
        """The error for a curvature matrix that cannot be allocated: which layer, how large, and what to do."""
        cfg, item = self.config, torch.empty(0, dtype=self.accumulate_dtype).element_size()
        dims = {layer: cfg.curvature_dim(shape) for layer, shape in self.shapes.items()}
        total = sum(d * d for d in dims.values()) * item / 2**30
        side = "r*d" if cfg.method == "exact" and cfg.exact_curvature == "fim" else "d"
        schulz = ", and the Schulz iteration several more matrices of that size" if cfg.method == "hyperinf" else ""
        return (
            f"Cannot allocate the {dim} x {dim} curvature of layer {name!r} ({dim * dim * item / 2**30:.3g} GiB in "
            f"{self.accumulate_dtype} on {self.device}; the {len(dims)} tracked matrices' curvatures need "
            f"{total:.3g} GiB together{schulz}). "
            f"method={cfg.method!r} keeps a {side} x {side} matrix per tracked matrix of rank-first shape (r, d): "
            "for a LoRA on the output layer (`lm_head`, whose lora_B is laid out as r x vocab) or on the input "
            "embedding (lora_embedding_A: r x vocab), d is the vocabulary size. Leave those modules out of "
            "`target_modules`, use a method whose per-layer state is r x d (method='datainf', 'lissa' or 'tracin'), "
            "or a device with more memory (`device=`)."
        )

    # ---------------------------------------------------------------- score
    def mean_gradient(self, source: GradientSource) -> dict[str, torch.Tensor]:
        """`v_l`: the mean of the per-example gradients of `source` (the validation set; a gradient source or a list
        of batches, as for `fit`)."""
        source = self.run_collectively(lambda: as_gradient_source(source, "eval_source"), "Checking `eval_source`")
        sums = {
            name: torch.zeros(shape, dtype=self.accumulate_dtype, device=self.device)
            for name, shape in self.shapes.items()
        }

        def local_pass() -> int:
            m = 0
            for batch in _open_source(source, "eval_source"):
                m += self._check_batch(batch)
                for name in sums:
                    sums[name].add_(batch[name].to(device=self.device, dtype=self.accumulate_dtype).sum(dim=0))
            return m

        m = self.run_collectively(local_pass, "The pass over the evaluation gradients")
        if self.process_group is not None:
            names = list(sums)
            count, *totals = self._sum([torch.tensor([float(m)], dtype=torch.float64)] + [sums[k] for k in names])
            m, sums = round(float(count)), dict(zip(names, totals))
        if m == 0:
            raise ValueError("The evaluation set is empty: pass at least one example to `scores`.")
        return {name: total / m for name, total in sums.items()}

    def _train_batches(self) -> Iterator[Mapping[str, torch.Tensor]]:
        if self.train_source is None:
            raise RuntimeError("Call `fit(train)` before computing influence.")
        count = 0
        for batch in _open_source(as_gradient_source(self.train_source, "train_source"), "train_source"):
            count += self._check_batch(batch)
            if count > self.num_local_train:
                break
            yield {name: batch[name].to(device=self.device, dtype=self.accumulate_dtype) for name in self.shapes}
        if count != self.num_local_train:
            raise ValueError(
                f"The training gradient source yielded {'at least ' if count > self.num_local_train else ''}{count} "
                f"examples in this pass but {self.num_local_train} in `fit`: it must return a fresh iterator over the same "
                "training examples, in the same order, on every call (a function that returns one generator again "
                "gives an exhausted one after `fit`). Pass a list of the batches or a function that makes them anew, "
                "and call `fit` again if the training set changed."
            )

    def inverse_hvp(self, v: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per layer, the method's approximation of `(curvature + lambda I)^-1` applied to `v_l` (in
        `accumulate_dtype`, as the training gradients it meets are read: a `v` in a half-precision `config.dtype` is
        upcast)."""
        cfg = self.config
        if not self.layers:
            raise RuntimeError("Call `fit(train)` before computing influence.")
        active = {name: self.layers[name] for name in self.active}
        v = {name: v[name].to(self.accumulate_dtype) for name in active}
        if cfg.method == "tracin":
            return {name: v[name].clone() for name in active}
        if cfg.method == "hyperinf":
            out = {}
            for name in active:
                solver = self.layers[name].solver
                out[name] = (v[name].to(solver.dtype) @ solver).to(v[name].dtype)
            return out
        if cfg.method == "exact":
            out = {}
            for name, layer in active.items():
                if cfg.exact_curvature == "gfim":
                    out[name] = torch.cholesky_solve(v[name].T.contiguous(), layer.solver).T
                else:
                    out[name] = torch.cholesky_solve(v[name].reshape(-1, 1), layer.solver).reshape(layer.shape)
            return out
        if cfg.method == "datainf":
            acc = {name: torch.zeros_like(v[name]) for name in active}

            def datainf_pass() -> None:
                for batch in self._train_batches():
                    for name, layer in active.items():
                        g = batch[name]
                        coeff = torch.einsum("brd,rd->b", g, v[name]) / (layer.damping + g.square().sum(dim=(1, 2)))
                        acc[name].add_(torch.einsum("b,brd->rd", coeff, g))

            self.run_collectively(datainf_pass, "DataInf's pass over the training gradients")
            acc = dict(zip(acc, self._sum(list(acc.values()))))
            return {name: (v[name] - acc[name] / self.num_train) / layer.damping for name, layer in active.items()}
        # LiSSA: r <- v + r - (F r + lambda r) / s, result r / s; one pass over the training set per iteration.
        scales = {
            name: cfg.lissa_scale
            if cfg.lissa_scale is not None
            else layer.sum_sq_norm / self.num_train + layer.damping
            for name, layer in active.items()
        }
        running = {name: v[name].clone() for name in active}
        # a growing step r_t - r_{t-1} means s is below half the top eigenvalue (see `lissa_step`)
        steps = {name: float(v[name].double().norm()) for name in active}
        growing = dict.fromkeys(active, False)
        for _ in range(cfg.lissa_iterations):
            products = {name: torch.zeros_like(v[name]) for name in active}

            def lissa_pass(products: dict[str, torch.Tensor] = products) -> None:
                for batch in self._train_batches():
                    for name in active:
                        g = batch[name]
                        dots = torch.einsum("brd,rd->b", g, running[name])
                        products[name].add_(torch.einsum("b,brd->rd", dots, g))

            self.run_collectively(lissa_pass, "A LiSSA pass over the training gradients")
            products = dict(zip(products, self._sum(list(products.values()))))
            for name, layer in active.items():
                product = products[name] / self.num_train + layer.damping * running[name]
                updated = v[name] + running[name] - product / scales[name]
                steps[name], grows = lissa_step(steps[name], running[name], updated)
                growing[name] |= grows
                running[name] = updated
        for name, layer in active.items():
            layer.info["lissa_scale"] = scales[name]
            if growing[name] or not torch.isfinite(running[name]).all():
                raise ValueError(
                    f"LiSSA diverged for layer {name!r} with lissa_scale={scales[name]:.3g}: the scale must exceed "
                    "half the largest eigenvalue of the damped Fisher. Leave `lissa_scale=None` (per layer, the "
                    "trace bound) or raise it."
                )
        return {name: running[name] / scales[name] for name in active}

    def scores_from_hvp(self, hvp: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`I(z_k) = -sum_l <hvp_l, g_{l,k}>` for every training example, in order (over the layers of `hvp`: those
        `fit` found a non-zero gradient for; a layer whose training gradients are all zero adds exactly 0). With a
        process group: every process's scores, in rank order, on every process."""
        hvp = {name: value.to(self.accumulate_dtype) for name, value in hvp.items()}  # as the training gradients

        def local_pass() -> torch.Tensor:
            chunks = [torch.zeros(0, dtype=self.accumulate_dtype, device=self.device)]
            for batch in self._train_batches():
                total = None
                for name in hvp:
                    part = torch.einsum("brd,rd->b", batch[name], hvp[name])
                    total = part if total is None else total + part
                chunks.append(-total)
            return torch.cat(chunks)

        gathered = self._gather(self.run_collectively(local_pass, "The scoring pass over the training gradients"))
        return gathered.to(self.config.dtype)

    def scores(self, eval_source: GradientSource) -> torch.Tensor:
        """Influence of every training example on the mean loss of the examples of `eval_source` (a gradient source or
        a list of batches, as for `fit`); the training source of `fit` is read again (see `fit`)."""
        start = time.perf_counter()
        v = self.mean_gradient(eval_source)
        if self.active and not any(bool(v[name].any()) for name in self.active):
            warnings.warn(
                f"The mean evaluation gradient is exactly zero on every fitted matrix ({len(self.active)}), so every "
                "influence score is 0: the evaluation loss is flat in the tracked parameters at this dtype, e.g. a "
                "classifier so confident on every evaluation example that its probabilities round to 1 (a legitimate "
                "answer: no training example moves that loss). If it should not be, check that the forward pass "
                "uses the tracked adapter.",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )
        out = self.scores_from_hvp(self.inverse_hvp(v))
        self.timings["scores_s"] = time.perf_counter() - start
        return out


def _tensor_source(grads: Mapping[str, torch.Tensor], batch_size: int) -> GradientSource:
    sizes = {t.shape[0] for t in grads.values()}
    if len(sizes) != 1:
        raise ValueError(f"All gradient tensors must share their first (example) axis, got sizes {sorted(sizes)}.")
    n = sizes.pop()

    def source() -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, n, batch_size):
            yield {name: t[start : start + batch_size] for name, t in grads.items()}

    return source


def influence_from_gradients(
    train_grads: Mapping[str, torch.Tensor],
    eval_grads: Mapping[str, torch.Tensor],
    method: str = "hyperinf",
    batch_size: int = 256,
    **options,
) -> torch.Tensor:
    """Influence scores from in-memory per-example gradients (for small problems and for checking the streaming path).

    Args:
        train_grads (`dict[str, torch.Tensor]`): per tracked matrix, `(n, r, d)` rank-first training gradients.
        eval_grads (`dict[str, torch.Tensor]`): the same with `(m, r, d)` validation gradients.
        method (`str`, *optional*, defaults to `"hyperinf"`): see `InfluenceConfig`.
        batch_size (`int`, *optional*, defaults to 256): examples per streamed chunk.
        **options: other `InfluenceConfig` fields.

    Returns:
        `torch.Tensor`: `(n,)` influence scores (positive = up-weighting the example raises the validation loss).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    for argument, grads in (("train_grads", train_grads), ("eval_grads", eval_grads)):
        if not isinstance(grads, Mapping):
            raise TypeError(f"`{argument}` must be a mapping {{name: (n, r, d) tensor}}, got {type(grads).__name__}.")
        for name, t in grads.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"`{argument}[{name!r}]` must be a torch.Tensor, got {type(t).__name__}.")
    if not train_grads:
        raise ValueError("`train_grads` is empty: pass {name: (n, r, d) tensor} for at least one tracked matrix.")
    if set(train_grads) != set(eval_grads):
        raise ValueError("`train_grads` and `eval_grads` must have the same tracked matrices (keys).")
    shapes = {}
    for name, t in train_grads.items():
        if t.ndim != 3:
            raise ValueError(f"`train_grads[{name!r}]` must have shape (n, r, d), got {tuple(t.shape)}.")
        if t.shape[0] == 0:
            raise ValueError("`train_grads` holds no example; pass at least one.")
        shapes[name] = (t.shape[1], t.shape[2])
    if any(t.shape[0] == 0 for t in eval_grads.values()):
        raise ValueError("`eval_grads` holds no example; pass at least one.")
    config = InfluenceConfig(method=method, **options)
    device = next(iter(train_grads.values())).device
    engine = InfluenceEngine(config, shapes, device=device)
    engine.fit(_tensor_source(train_grads, batch_size))
    return engine.scores(_tensor_source(eval_grads, batch_size))
