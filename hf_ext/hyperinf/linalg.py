"""Inverse-Hessian-vector products used by influence functions: Schulz's iteration and the baselines' solvers.

All functions here are pure tensor code with no model in sight. Gradients follow the *rank-first* layout: the
gradient of one LoRA matrix for one example is an `(r, d)` matrix (see `hf_ext.hyperinf.gradients`).

Notation (per tracked matrix, or "layer", `l`): `g_i` is the `(r, d)` gradient of train example `i`, `v` the mean
validation gradient, `lambda` the damping.

* the generalized Fisher matrix (GFIM) is `G = (1/n) sum_i g_i^T g_i`, a `(d, d)` matrix whose size does not depend
  on the LoRA rank; HyperINF applies its inverse from the right: `v (G + lambda I)^-1`;
* the empirical Fisher (FIM) is `F = (1/n) sum_i vec(g_i) vec(g_i)^T`, `(r d, r d)`; DataInf approximates
  `(F + lambda I)^-1 vec(v)` in closed form and LiSSA iterates towards it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from ..utils.checks import is_int as _is_int
from ..utils.checks import is_real as _is_real
from ..utils.checks import python_scalar

SCHULZ_INITS = ("identity", "transpose", "frobenius")
#: Initial scale of the reference implementation: X_0 = 5e-5 * I.
REFERENCE_SCHULZ_ALPHA = 5e-5


class SchulzConvergenceWarning(UserWarning):
    """Schulz's iteration stopped before its residual reached the requested tolerance."""


class SchulzDivergenceError(ValueError):
    """Schulz's iteration diverged: the initial scale is too large for the matrix (`alpha * mu_max > 2`).

    Attributes:
        info (`SchulzInfo`): the diagnostics up to the step where the divergence was detected.
    """

    def __init__(self, message: str, info: SchulzInfo):
        super().__init__(message)
        self.info = info


@dataclass
class SchulzInfo:
    """Diagnostics of one `schulz_inverse` call.

    Attributes:
        alpha (`float`): scale of the initial guess (`X_0 = alpha * I` or `alpha * A^T`).
        iterations (`int`): iterations run.
        converged (`bool`): whether the residual reached the tolerance (always `False` without a tolerance).
        stalled (`bool`): whether the iteration stopped early because the residual stopped decreasing (the rounding
            floor of the dtype) before reaching the tolerance.
        diverged (`bool`): whether the iteration was stopped because it diverged (see `schulz_inverse`).
        residuals (`list[float]`): `||I - A X_k||` (Frobenius, divided by `sqrt(d)`) for `k = 0..iterations`.
        spectral_residuals (`list[float]`): the same in spectral norm, only when `track_spectral=True`.
    """

    alpha: float
    iterations: int = 0
    converged: bool = False
    stalled: bool = False
    diverged: bool = False
    residuals: list[float] = field(default_factory=list)
    spectral_residuals: list[float] = field(default_factory=list)

    @property
    def final_residual(self) -> float:
        return self.residuals[-1] if self.residuals else float("nan")


def _check_square(matrix: torch.Tensor, name: str) -> None:
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(matrix).__name__}.")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty square matrix, got shape {tuple(matrix.shape)}.")
    if not matrix.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got {matrix.dtype}.")


def schulz_initial_alpha(matrix: torch.Tensor, init: str = "identity") -> float:
    """Default scale of Schulz's initial guess for `init`.

    * `"identity"`: the reference implementation's `X_0 = 5e-5 * I`. It converges only if
      `5e-5 * mu_max(A) < 2`, and needs about `log2(1 / (5e-5 * mu_min))` iterations before small-eigenvalue
      directions start to converge.
    * `"transpose"`: `X_0 = alpha * A^T` with `alpha = 1 / (||A||_1 ||A||_inf)`, which converges for every
      non-singular `A` because `sigma_max(A)^2 <= ||A||_1 ||A||_inf`.
    * `"frobenius"`: `X_0 = I / ||A||_F`, convergent for every symmetric positive-definite `A`.
    """
    if init == "identity":
        return REFERENCE_SCHULZ_ALPHA
    if init == "transpose":
        norm_1 = matrix.abs().sum(dim=0).max()
        norm_inf = matrix.abs().sum(dim=1).max()
        return float(1.0 / (norm_1 * norm_inf))
    if init == "frobenius":
        return float(1.0 / torch.linalg.matrix_norm(matrix))
    raise ValueError(f"`init` must be one of {SCHULZ_INITS}, got {init!r}.")


def schulz_inverse(
    matrix: torch.Tensor,
    num_iterations: int = 30,
    init: str = "identity",
    alpha: float | None = None,
    tol: float | None = None,
    order: int = 2,
    track_spectral: bool = False,
    warn: bool = True,
) -> tuple[torch.Tensor, SchulzInfo]:
    """Invert `matrix` with Schulz's (hyperpower) iteration.

    Order 2 is Newton-Schulz, `X_{k+1} = X_k (2I - A X_k)`; order 3 is `X_{k+1} = X_k (I + R_k + R_k^2)` with
    `R_k = I - A X_k`. The residual obeys `R_{k+1} = R_k^order` exactly, so once `||R_k|| < 1` the error is squared
    (cubed) at every step.

    Args:
        matrix (`torch.Tensor`): square, non-singular `(d, d)` matrix `A` (symmetric positive definite for the
            `"identity"`/`"frobenius"` initialisations).
        num_iterations (`int`, *optional*, defaults to 30): maximum number of iterations (the reference uses 30 for
            mislabeled-data detection, 15 for LLM data selection).
        init (`str`, *optional*, defaults to `"identity"`): `"identity"` (`X_0 = alpha I`, the reference),
            `"transpose"` (`X_0 = alpha A^T`, convergent for any non-singular matrix) or `"frobenius"`
            (`X_0 = I / ||A||_F`). See `schulz_initial_alpha`.
        alpha (`float`, *optional*): scale of the initial guess; defaults to `schulz_initial_alpha(matrix, init)`.
        tol (`float`, *optional*): stop once `||I - A X_k||_F / sqrt(d) <= tol` (`info.converged = True`). The
            iteration also stops, *without* counting as converged (`info.stalled = True`), once the residual, already
            below 1, stops decreasing while staying at or below its start: the rounding floor of the dtype, reached
            for example in float32 on an ill-conditioned matrix. `None` runs exactly `num_iterations` iterations, as
            the reference does, and never claims convergence.
        order (`int`, *optional*, defaults to 2): hyperpower order, 2 or 3.
        track_spectral (`bool`, *optional*, defaults to `False`): also record spectral norms of the residuals
            (costs an SVD per step; for diagnostics and tests).
        warn (`bool`, *optional*, defaults to `True`): emit a `SchulzConvergenceWarning` when `tol` is set and the
            residual did not reach it.

    Returns:
        `tuple[torch.Tensor, SchulzInfo]`: the approximate inverse `X` and the diagnostics.

    Raises:
        `ValueError`: `matrix` holds NaN or inf (it was reported as a divergence whose fix was another start), or is
            all zeros (singular).
        `SchulzDivergenceError` (a `ValueError`): the iteration diverged, whatever `tol`: the residual is not finite,
            or exceeds both 1 and its start (a convergent start has `||R_k|| <= ||R_0|| < 1`, since `R_k` is a power
            of `R_0`), or, with `tol`, it grows back above its start once below 1. This happens when
            `alpha * mu_max(A) > 2` (e.g. the reference's `X_0 = 5e-5 I` on a matrix with `mu_max > 4e4`); at exactly
            2 that eigenvalue's residual keeps its size, so the iteration neither converges nor diverges (with `tol`:
            `info.stalled`, and a `SchulzConvergenceWarning`). The error carries the diagnostics (`err.info`).
    """
    _check_square(matrix, "matrix")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(
            f"`matrix` holds NaN or inf, so every iterate, and the inverse, would be NaN whatever the start or scale; "
            f"pass a finite matrix (e.g. accumulate the GFIM in float32 or float64: float16 overflows past "
            f"{torch.finfo(torch.float16).max:g})."
        )
    if not bool(matrix.any()):
        # singular: the "frobenius"/"transpose" starts were an infinite scale reported as a divergence whose fix was
        # init='frobenius', and the "identity" start returned alpha * 2^num_iterations * I without a word (tol=None)
        raise ValueError(
            "`matrix` is all zeros: it is singular and has no inverse whatever the start; pass a non-singular matrix "
            "(e.g. a curvature plus its damping, A + damping * I)."
        )
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 0:
        raise ValueError(f"`num_iterations` must be a non-negative integer, got {num_iterations!r}.")
    if init not in SCHULZ_INITS:
        raise ValueError(f"`init` must be one of {SCHULZ_INITS}, got {init!r}.")
    if order not in (2, 3):
        raise ValueError(f"`order` must be 2 or 3, got {order!r}.")
    tol, alpha = python_scalar(tol), python_scalar(alpha)  # numpy numbers and 0-d tensors too
    if tol is not None and not (_is_real(tol) and 0 < tol < 1):
        raise ValueError(
            f"`tol` must lie in (0, 1) or be None, got {tol!r} (a residual ||I - A X||_F / sqrt(d) of 1 or more means "
            "no inverse at all)."
        )
    if alpha is not None and not (_is_real(alpha) and 0 < alpha < math.inf):
        raise ValueError(f"`alpha` must be a finite positive float or None, got {alpha!r}.")

    d = matrix.shape[0]
    eye = torch.eye(d, dtype=matrix.dtype, device=matrix.device)
    alpha = schulz_initial_alpha(matrix, init) if alpha is None else float(alpha)
    x = alpha * (matrix.T.clone() if init == "transpose" else eye)
    info = SchulzInfo(alpha=alpha)
    scale = d**0.5
    for step in range(num_iterations + 1):
        residual = eye - matrix @ x
        info.residuals.append(float(torch.linalg.matrix_norm(residual)) / scale)
        if track_spectral:
            info.spectral_residuals.append(float(torch.linalg.matrix_norm(residual, ord=2)))
        current, start = info.residuals[-1], info.residuals[0]
        if not math.isfinite(current) or current > max(start, 1.0):
            # R_k = R_0^(2^k) (or 3^k): it only grows past its start, and past 1, when alpha * mu_max > 2
            info.diverged = True
            break
        if tol is not None and current <= tol:
            info.converged = True
            break
        if tol is not None and step > 0 and info.residuals[-2] < 1.0 and current >= info.residuals[-2]:
            # the residual stopped shrinking. Back above its start: an eigenvalue with |1 - alpha mu| > 1 took over
            # (divergence). Otherwise the rounding floor of the dtype: more iterations cannot help, but the tolerance
            # was not reached, so this is not convergence (in float32 on an ill-conditioned matrix the floor can be a
            # residual of 0.999, i.e. no inverse at all).
            if current > start:
                info.diverged = True
            else:
                info.stalled = True
            break
        if step == num_iterations:
            break
        if order == 2:
            x = x @ (eye + residual)
        else:
            x = x @ (eye + residual @ (eye + residual))
        info.iterations += 1
    if info.diverged:
        safe_alpha = float(1.0 / torch.linalg.matrix_norm(matrix))
        raise SchulzDivergenceError(schulz_divergence_message(info, matrix.dtype, safe_alpha=safe_alpha), info)
    if warn and tol is not None and not info.converged:
        warnings.warn(schulz_warning_message(info, tol, matrix.dtype), SchulzConvergenceWarning, stacklevel=2)
    return x, info


def schulz_warning_message(info: SchulzInfo, tol: float, dtype: torch.dtype, where: str = "") -> str:
    """The text of a `SchulzConvergenceWarning`: what happened and how to fix it."""
    reason = "the residual stopped decreasing (rounding floor)" if info.stalled else "the iteration budget ran out"
    return (
        f"Schulz's iteration{where} did not converge: residual ||I - AX||_F/sqrt(d) = {info.final_residual:.3g} > "
        f"tol={tol:g} after {info.iterations} iterations in {dtype} ({reason}). The inverse, and influence scores "
        "computed with it, are inaccurate. Invert in float64, use init='frobenius' (or a larger damping), or "
        "raise the number of iterations."
    )


def schulz_divergence_message(
    info: SchulzInfo, dtype: torch.dtype, where: str = "", safe_alpha: float | None = None
) -> str:
    """The text of a `SchulzDivergenceError`: what happened and how to fix it."""
    safe = f" (e.g. 1/||A||_F = {safe_alpha:.3g})" if safe_alpha is not None else ""
    return (
        f"Schulz's iteration{where} diverged: residual ||I - AX||_F/sqrt(d) went from {info.residuals[0]:.3g} to "
        f"{info.final_residual:.3g} after {info.iterations} iterations in {dtype}. The initial scale "
        f"alpha={info.alpha:.3g} is too large for this matrix (convergence needs alpha * mu_max < 2), so the inverse, "
        "and influence scores computed with it, would be NaN or meaningless. Use the default start "
        "init='frobenius' (schulz_init='frobenius': X_0 = I/||A||_F, convergent for the damped GFIM) or a smaller "
        f"initial scale (`alpha`, or `schulz_alpha` for InfluenceEstimator){safe}."
    )


def damping_from_gradients(mean_sq: torch.Tensor | float, scale: float = 0.1) -> float:
    """DataInf's per-layer damping `lambda_l = scale * (1/n) sum_i mean(g_{l,i}^2)`.

    Args:
        mean_sq (`torch.Tensor` or `float`): `(1/n) sum_i mean(g_{l,i}^2)`, the mean over examples of each example's
            mean squared gradient entry.
        scale (`float`, *optional*, defaults to 0.1): the multiplier (0.1 in DataInf and HyperINF).
    """
    return float(scale * float(mean_sq))


def gfim(grads: torch.Tensor) -> torch.Tensor:
    """Generalized Fisher matrix `(1/n) sum_i g_i^T g_i` of rank-first gradients `grads` of shape `(n, r, d)`."""
    _check_vector(grads, "grads")
    if grads.ndim != 3 or grads.shape[0] == 0:
        raise ValueError(f"`grads` must have shape (n, r, d) with n > 0, got {tuple(grads.shape)}.")
    return torch.einsum("nri,nrj->ij", grads, grads) / grads.shape[0]


def fim(grads: torch.Tensor) -> torch.Tensor:
    """Empirical Fisher `(1/n) sum_i vec(g_i) vec(g_i)^T` (`(r d, r d)`) of gradients `grads` of shape `(n, ...)`."""
    _check_vector(grads, "grads")
    if grads.ndim < 2 or grads.shape[0] == 0:
        raise ValueError(f"`grads` must have shape (n, ...) with n > 0, got {tuple(grads.shape)}.")
    flat = grads.reshape(grads.shape[0], -1)
    return flat.T @ flat / flat.shape[0]


def _check_dense_solve(v, matrix, name: str, damping) -> float:
    """The checks of `exact_gfim_hvp`/`exact_fim_hvp`: `v` a finite rank-first `(r, d)` matrix, `matrix` (`name`:
    `gfim_matrix` or `fim_matrix`) a finite `(d, d)` GFIM or `(r d, r d)` FIM, `damping` finite and positive (returned
    as a float)."""
    _check_vector(v)
    if v.ndim != 2 or v.numel() == 0:
        raise ValueError(
            f"`v` must be a non-empty rank-first `(r, d)` matrix (one gradient in the layout of the gradients the "
            f"curvature was built from), got shape {tuple(v.shape)}."
        )
    _check_square(matrix, name)
    size, what = (v.shape[-1], "d x d with d = v.shape[-1]") if name == "gfim_matrix" else (v.numel(), "r d x r d")
    if matrix.shape[0] != size:
        raise ValueError(
            f"`{name}` must be {what}, i.e. ({size}, {size}) for `v` of shape {tuple(v.shape)}, got "
            f"{tuple(matrix.shape)} (is `v` transposed, or from another layer?)."
        )
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"`{name}` holds NaN or inf; every entry of the result would be NaN.")
    return _check_damping(damping)


def exact_gfim_hvp(v: torch.Tensor, gfim_matrix: torch.Tensor, damping: float) -> torch.Tensor:
    """`v (G + lambda I)^-1` by a Cholesky solve (the "exact" counterpart of HyperINF).

    Args:
        v (`torch.Tensor`): the `(r, d)` vector, in the rank-first layout.
        gfim_matrix (`torch.Tensor`): the `(d, d)` GFIM `G` (see `gfim`), `d = v.shape[-1]`.
        damping (`float`): `lambda > 0`, finite.

    Raises:
        `ValueError`/`TypeError`: naming the argument, for a `v` that is not a finite 2-D floating-point tensor, a
            `gfim_matrix` that is not a finite `(d, d)` matrix, or a damping that is not finite and positive.
    """
    damping = _check_dense_solve(v, gfim_matrix, "gfim_matrix", damping)
    damped = gfim_matrix + damping * torch.eye(gfim_matrix.shape[0], dtype=gfim_matrix.dtype, device=v.device)
    factor = torch.linalg.cholesky(damped)
    return torch.cholesky_solve(v.T.to(damped.dtype), factor).T


def exact_fim_hvp(v: torch.Tensor, fim_matrix: torch.Tensor, damping: float) -> torch.Tensor:
    """`(F + lambda I)^-1 vec(v)` reshaped like `v`, by a Cholesky solve (the reference's `accurate` method).

    Args:
        v (`torch.Tensor`): the `(r, d)` vector, in the layout of the gradients `F` was built from (a transposed `v`
            has as many entries: only the caller can tell it apart).
        fim_matrix (`torch.Tensor`): the `(r d, r d)` empirical Fisher `F` (see `fim`).
        damping (`float`): `lambda > 0`, finite.

    Raises:
        `ValueError`/`TypeError`: naming the argument, for a `v` that is not a finite 2-D floating-point tensor, a
            `fim_matrix` that is not a finite `(v.numel(), v.numel())` matrix, or a damping that is not finite and
            positive.
    """
    damping = _check_dense_solve(v, fim_matrix, "fim_matrix", damping)
    damped = fim_matrix + damping * torch.eye(fim_matrix.shape[0], dtype=fim_matrix.dtype, device=v.device)
    factor = torch.linalg.cholesky(damped)
    return torch.cholesky_solve(v.reshape(-1, 1).to(damped.dtype), factor).reshape(v.shape)


def _check_vector(v, name: str = "v") -> None:
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(v).__name__}.")
    if not v.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got {v.dtype}.")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"`{name}` holds NaN or inf; every entry of the result would be NaN.")


def _positive_finite(value, name: str, hint: str) -> float:
    """`value` (a number or a 0-dim tensor) as a float, refused naming `name` unless it is finite and positive."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype != torch.bool:
        value = value.item()
    if not _is_real(value):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"`{name}` must be a finite positive number ({hint}), got {value!r}.")
    return float(value)


def _check_damping(damping) -> float:
    """DataInf divides by the damping, and both solvers need it to make the curvature invertible: a zero, negative or
    NaN damping returned inf, a wrong finite value or NaN."""
    return _positive_finite(
        damping, "damping", "e.g. 0.1 * the mean squared gradient entry, see `damping_from_gradients`"
    )


def datainf_hvp(v: torch.Tensor, grads: torch.Tensor, damping: float) -> torch.Tensor:
    """DataInf's closed form (Kwon et al., 2024) for `(F + lambda I)^-1 vec(v)`.

    Swapping the inverse and the average and applying Sherman-Morrison to each rank-one term gives
    `(1/(n lambda)) sum_i [v - <v, g_i> / (lambda + ||g_i||^2) g_i]`. Exact when `n = 1`.

    Args:
        v (`torch.Tensor`): the vector, shaped like one gradient.
        grads (`torch.Tensor`): `(n, *v.shape)` per-example gradients, `n > 0`.
        damping (`float`): `lambda > 0`, finite.

    Raises:
        `ValueError`/`TypeError`: naming the argument, for a damping that is not finite and positive, `grads` not of
            shape `(n, *v.shape)` (the exact shape, not only the same number of entries), or NaN/inf entries.
    """
    _check_vector(v)
    _check_vector(grads, "grads")
    damping = _check_damping(damping)
    if grads.ndim != v.ndim + 1 or tuple(grads.shape[1:]) != tuple(v.shape) or grads.shape[0] == 0:
        raise ValueError(
            f"`grads` must have shape (n, *v.shape) = (n, {', '.join(map(str, v.shape))}) with n > 0 (one gradient "
            f"shaped like `v` per example), got {tuple(grads.shape)} for `v` of shape {tuple(v.shape)}."
        )
    n = grads.shape[0]
    flat = grads.reshape(n, -1)
    vf = v.reshape(-1)
    coeff = (flat @ vf) / (damping + (flat * flat).sum(dim=1))
    return ((vf - coeff @ flat / n) / damping).reshape(v.shape)


def lissa_hvp(
    v: torch.Tensor,
    matvec,
    damping: float,
    scale: float,
    num_iterations: int = 10,
) -> torch.Tensor:
    """Damped, scaled LiSSA / truncated Neumann series for `(A + lambda I)^-1 v`.

    Iterates `r_{t+1} = v + (I - (A + lambda I) / s) r_t` from `r_0 = v` and returns `r_T / s`, which converges to the
    solve when `s >= mu_max(A) + lambda` (any `s > (mu_max + lambda) / 2` works).

    Args:
        v (`torch.Tensor`): the vector.
        matvec (`Callable[[torch.Tensor], torch.Tensor]`): `x -> A x` for a symmetric PSD `A` (shape-preserving).
        damping (`float`): `lambda >= 0`, finite (positive where `A` may be singular; 0 is exact for a definite `A`).
        scale (`float`): `s > 0`, finite, an upper bound of the largest eigenvalue of `A + lambda I` (e.g. its trace
            plus `lambda`).
        num_iterations (`int`, *optional*, defaults to 10): recursion depth `T >= 1` (10 in the reference).

    Raises:
        `ValueError`/`TypeError`: naming the argument, for a damping that is not finite and non-negative, a scale that
            is not finite and positive, a
            `num_iterations` that is not a positive int, or a `matvec` whose result is not shaped like `v`; and when
            the series diverges (`scale` below half the largest eigenvalue of `A + lambda I`: a step `r_t - r_{t-1}`
            grows, also while the sum is still finite), which `InfluenceEngine` detects in the same way.
    """
    _check_vector(v)
    if not callable(matvec):
        raise TypeError(f"`matvec` must be a callable `x -> A x` (shape-preserving), got {type(matvec).__name__}.")
    if isinstance(damping, torch.Tensor) and damping.ndim == 0 and damping.dtype != torch.bool:
        damping = damping.item()
    if not _is_real(damping):
        raise TypeError(f"`damping` must be a number, got {damping!r}.")
    if not (damping >= 0 and math.isfinite(damping)):  # LiSSA does not divide by it: 0 is exact for a definite A
        raise ValueError(
            f"`damping` must be a finite non-negative number (positive where A may be singular, e.g. 0.1 * the mean "
            f"squared gradient entry, see `damping_from_gradients`), got {damping!r}."
        )
    damping = float(damping)
    scale = _positive_finite(
        scale, "scale", "an upper bound of the largest eigenvalue of A + damping I, e.g. its trace"
    )
    if not _is_int(num_iterations) or num_iterations < 1:
        raise ValueError(f"`num_iterations` must be a positive int (e.g. the default 10), got {num_iterations!r}.")
    running, previous, diverged = v.clone(), float(v.double().norm()), False
    for _ in range(num_iterations):
        product = matvec(running)
        if not isinstance(product, torch.Tensor) or tuple(product.shape) != tuple(v.shape):
            got = tuple(product.shape) if isinstance(product, torch.Tensor) else type(product).__name__
            raise ValueError(f"`matvec` must return a tensor shaped like `v` {tuple(v.shape)}, got {got}.")
        updated = v + running - (product + damping * running) / scale
        previous, diverged = lissa_step(previous, running, updated)
        running = updated
        if diverged:
            break
    if diverged or not bool(torch.isfinite(running).all()):
        raise ValueError(
            f"LiSSA diverged with scale={scale:.3g}: the scale must exceed half the largest eigenvalue of "
            "A + damping I; pass an upper bound of it (e.g. the trace of A plus the damping)."
        )
    return running / scale


#: LiSSA: relative growth of a step `r_t - r_{t-1}` over the previous one read as divergence (float rounding stays far
#: below it; a series growing more slowly than this over the iterations is off by less than a percent).
LISSA_GROWTH_TOLERANCE = 1e-3


def lissa_step(previous: float, running: torch.Tensor, updated: torch.Tensor) -> tuple[float, bool]:
    """The norm of the LiSSA step `updated - running` and whether it grew past the previous step's norm `previous`
    (start with `||v||`, the first step being `r_0 = v`): the divergence check of `lissa_hvp` and `InfluenceEngine`.

    `r_t - r_{t-1} = M^t v` with `M = I - (A + lambda I) / s` symmetric: its norm never grows while the series
    converges (`|eigenvalues of M| <= 1`); a growing step means `s` is below half the top eigenvalue (diverging,
    possibly still finite after the last iteration). Growth within `LISSA_GROWTH_TOLERANCE`, or below the rounding
    floor of the sum (where a converged series' steps fluctuate), does not count.
    """
    step = float((updated - running).double().norm())
    floor = 1e3 * torch.finfo(updated.dtype).eps * float(updated.double().norm())
    return step, step > max(previous * (1 + LISSA_GROWTH_TOLERANCE), floor)


def lissa_hvp_reference(
    v: torch.Tensor, grads: torch.Tensor, damping: float, num_iterations: int = 10, alpha: float = 1.0
) -> torch.Tensor:
    """The LiSSA recursion of the reference mislabeled-detection code, kept only for parity checks.

    It iterates `r <- v + r - alpha (F r - lambda r)` with no scaling: the sign of the damping term makes it target
    `(F - lambda I)^-1`, and it diverges as soon as `alpha * mu_max(F) > 2`. Use `lissa_hvp` instead.

    Raises:
        `ValueError`/`TypeError`: naming the argument, for `v`/`grads` that are not finite floating-point tensors,
            `grads` not of shape `(n, *v.shape)`, or a `num_iterations` that is not a positive int (a negative one
            returned `v` itself, a transposed `grads` a recursion on the wrong matrix).
    """
    _check_vector(v)
    _check_vector(grads, "grads")
    if grads.ndim != v.ndim + 1 or tuple(grads.shape[1:]) != tuple(v.shape) or grads.shape[0] == 0:
        raise ValueError(
            f"`grads` must have shape (n, *v.shape) with n > 0, got {tuple(grads.shape)} for `v` of shape "
            f"{tuple(v.shape)}."
        )
    if not _is_int(num_iterations) or num_iterations < 1:
        raise ValueError(f"`num_iterations` must be a positive int (e.g. the default 10), got {num_iterations!r}.")
    n = grads.shape[0]
    flat = grads.reshape(n, -1)
    vf = v.reshape(-1)
    running = vf.clone()
    for _ in range(num_iterations):
        product = flat.T @ (flat @ running) / n - damping * running
        running = vf + running - alpha * product
    return running.reshape(v.shape)
