"""Stochastic cubic-regularised Newton with momentum on the gradient and Hessian estimates.

Cubic model (Nesterov-Polyak, `M/6` convention by default)::

    m(h) = <g, h> + 1/2 <H h, h> + M/6 ||h||^3,        x+ = x + lr * argmin_h m(h)

The optimality conditions are `g + (H + M/2 ||h|| I) h = 0` and `H + M/2 ||h|| I >= 0`. With
`cubic_convention="M/3"` the cubic term is `M/3 ||h||^3` (several public codes use it), i.e. `M` is doubled internally.

Pieces:

* Hessian-vector products with `torch.func` (forward-over-reverse `jvp(grad(f))`, or double backward), on a flat
  parameter vector (`FlatParameters`, `make_flat_loss`). HF models must run eager or sdpa attention (flash, flex
  and the other fused kernels have no double backward or forward-mode AD): `check_second_order_support` says so. HF's
  sdpa attention and modules that call torch's `scaled_dot_product_attention` themselves (`nn.MultiheadAttention`,
  `nn.TransformerEncoderLayer`, custom code) run on its math backend inside the loss function and the optimizer step (`second_order_attention`), which is
  differentiable twice.
* Sub-problem solvers: `solve_cubic_exact` (eigendecomposition, bisection on the secular equation, hard case),
  `solve_cubic_lanczos` (Krylov subspace from HVPs) and `solve_cubic_gd` (gradient descent from the Cauchy point).
* `CubicNewton`, a `torch.optim.Optimizer` whose `step(closure)` receives a loss function of the flat parameters for
  the current sample, with gradient momentum (`momentum` in `none | ema | extrapolated | hessian_corrected`) and
  Hessian momentum (`hessian` in `dense | window | fresh`), fixed or adaptive `M`, and optional step caps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.optim import Optimizer

from ..utils.checks import is_int as _is_int
from ..utils.checks import is_real as _is_real
from ..utils.checks import python_scalar as _python_scalar
from ..utils.distributed import is_dtensor as _is_dtensor

__all__ = [
    "CubicNewton",
    "FlatParameters",
    "check_second_order_support",
    "cubic_model_value",
    "hessian_vector_product",
    "make_flat_loss",
    "second_order_attention",
    "solve_cubic_exact",
    "solve_cubic_gd",
    "solve_cubic_lanczos",
]

HvpFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------------
# flat parameters and Hessian-vector products
# ----------------------------------------------------------------------------------------------------------------------
class FlatParameters:
    """Map between a list of parameter tensors and one flat vector (the only place this mapping lives).

    The tensors must share one dtype: the flat vector has a single dtype and its views are not cast back.

    Args:
        params (`list[torch.Tensor]`): tensors in a fixed order.
        names (`list[str]`, *optional*): their names in a module (needed for `to_dict`).
    """

    def __init__(self, params: list[torch.Tensor], names: list[str] | None = None):
        if not params:
            raise ValueError("FlatParameters needs at least one parameter tensor.")
        dtypes = list(dict.fromkeys(p.dtype for p in params))
        if len(dtypes) > 1:
            raise ValueError(
                f"The parameters mix dtypes {', '.join(map(str, dtypes))}; one flat parameter vector needs a single "
                "dtype, and cubic Newton needs float32 (or float64) Hessian-vector products: convert the model with "
                "`model.float()`."
            )
        self.params = list(params)
        self.names = names
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)

    def flatten(self, tensors: list[torch.Tensor] | None = None) -> torch.Tensor:
        tensors = self.params if tensors is None else tensors
        return torch.cat([t.detach().reshape(-1) for t in tensors])

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of `flat` shaped like the parameters (differentiable)."""
        if flat.dim() != 1 or flat.numel() != self.dim:
            raise ValueError(
                f"FlatParameters.split got a vector of shape {tuple(flat.shape)}, but its {len(self.params)} parameter "
                f"tensors hold {self.dim} entries. A CubicNewton closure's loss function (e.g. from make_flat_loss) "
                "must take the optimizer's own parameters, flattened in the optimizer's order: build the optimizer "
                "over the same parameters as the loss function, e.g. CubicNewton(model.parameters()) with "
                "make_flat_loss(model, batch)."
            )
        return [c.view(s) for c, s in zip(torch.split(flat, self.numels), self.shapes)]

    def to_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.names is None:
            raise ValueError("FlatParameters was built without names; pass `names` to use to_dict().")
        return dict(zip(self.names, self.split(flat)))

    @torch.no_grad()
    def assign(self, flat: torch.Tensor) -> None:
        for p, c in zip(self.params, self.split(flat)):
            p.copy_(c.to(p.dtype))


SECOND_ORDER_ATTENTION = ("eager", "sdpa")  # transformers' attention kernels that HVPs can go through


def second_order_attention():
    """Context manager (and decorator) restricting `torch.nn.functional.scaled_dot_product_attention` to its math
    backend.

    The fused SDPA kernels (flash, memory-efficient, cuDNN, and the CPU flash kernel) have no double backward and no
    forward-mode AD, so a Hessian-vector product through a module that calls SDPA directly (`nn.MultiheadAttention`,
    as in `GrokDecoderForCausalLM`, `nn.TransformerEncoderLayer`, custom attention code) fails with "derivative for
    aten::_scaled_dot_product_flash_attention..._backward is not implemented". The math backend computes the same
    attention from matmul and softmax, which torch differentiates twice. `make_flat_loss`'s function, `CubicNewton.step`
    and `hessian_vector_product` run under it; code without SDPA is unaffected.
    """
    return sdpa_kernel(SDPBackend.MATH)


def check_second_order_support(model: nn.Module) -> None:
    """Raise a `ValueError` when `model` cannot give exact Hessian-vector products.

    HF models must use eager or sdpa attention (`attn_implementation="eager"` / `"sdpa"`): flash, flex and the other
    fused kernels have no double backward and no forward-mode AD. `sdpa` works because the loss functions, the HVPs
    and `CubicNewton.step` run torch's SDPA on its math backend (`second_order_attention`), which gives the same
    products as eager attention; a module calling torch's SDPA itself needs nothing either. Gradient checkpointing
    breaks double backward as well.
    """
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None) if config is not None else None
    if impl is not None and impl not in SECOND_ORDER_ATTENTION:
        raise ValueError(
            f"Hessian-vector products need eager or sdpa attention, but the model uses attn_implementation={impl!r} "
            "(fused attention kernels have no double backward / forward-mode AD). Load it with "
            "`from_pretrained(..., attn_implementation='sdpa')` / `from_config(cfg, attn_implementation='sdpa')` or "
            "call `model.set_attn_implementation('sdpa')` ('eager' works too)."
        )
    name = (
        "is_activation_checkpointing"
        if hasattr(type(model), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    if getattr(model, name, False):
        raise ValueError(
            "Gradient checkpointing breaks exact Hessian-vector products; disable it "
            "(`model.gradient_checkpointing_disable()`, `--gradient_checkpointing false`)."
        )


def make_flat_loss(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    loss_fn: Callable | None = None,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], FlatParameters]:
    """A pure function `f(flat_params) -> loss` of `model` on `batch`, via `torch.func.functional_call`.

    Args:
        model (`nn.Module`): the model; its trainable parameters (in `named_parameters()` order) form the vector.
        batch (`Mapping[str, torch.Tensor]`): keyword inputs of `model.forward`.
        loss_fn (`Callable`, *optional*): `loss_fn(outputs, batch) -> scalar`; default: `outputs.loss` /
            `outputs["loss"]`.

    Returns:
        `(f, flat)`: the loss function and the `FlatParameters` describing the vector; `f.flat` is `flat` too, so
        that `CubicNewton.step` can check that `f` takes the optimizer's parameters, in its order.
    """
    check_second_order_support(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    flat = FlatParameters([p for _, p in named], [n for n, _ in named])
    buffers = dict(model.named_buffers())

    def f(x: torch.Tensor) -> torch.Tensor:
        # torch's fused SDPA kernels cannot be differentiated twice; its math backend can (second_order_attention)
        with second_order_attention():
            out = torch.func.functional_call(model, (flat.to_dict(x), buffers), args=(), kwargs=dict(batch))
        if loss_fn is not None:
            return loss_fn(out, batch)
        loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is None:
            raise ValueError("The model returned no loss; include `labels` in the batch or pass `loss_fn`.")
        return loss

    f.flat = flat
    return f, flat


HVP_MODES = ("auto", "forward_over_reverse", "double_backward")


def _forward_over_reverse(f, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.func.jvp(torch.func.grad(f), (x.detach(),), (v.detach().to(x.dtype),))[1]


def _reverse_gradient(f, xx: torch.Tensor) -> torch.Tensor | None:
    """`grad f(xx)` with a graph for a second backward, or None where the gradient does not depend on `xx` (`f`
    constant or linear in it: its Hessian is 0). `autograd.grad` raised "element 0 of tensors does not require grad"
    on such a function, where forward-over-reverse gives `H v = 0`."""
    loss = f(xx)
    if not loss.requires_grad:
        return None
    (g,) = torch.autograd.grad(loss, xx, create_graph=True, allow_unused=True)
    return g if g is not None and g.requires_grad else None


def _double_backward(f, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        g = _reverse_gradient(f, xx)
        if g is None:  # the Hessian is 0
            return torch.zeros_like(xx).detach()
        (hv,) = torch.autograd.grad(g, xx, v.detach().to(x.dtype), allow_unused=True, materialize_grads=True)
    return hv.detach()


_FORWARD_AD_FALLBACK_WARNING = (
    "hessian_vector_product: torch's forward-mode AD failed on this function ({err}); using double backward for its "
    "Hessian-vector products (the same H v; mode / hvp_mode / --cubic_hvp_mode 'double_backward' skips the attempt)."
)


def _hvp_auto(f, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Forward-over-reverse, or double backward where torch's forward-mode AD fails on an operation of `f`; returns
    `(H v, whether it fell back)`. An error of `f` itself is raised again by the double backward."""
    try:
        return _forward_over_reverse(f, x, v), False
    except (RuntimeError, NotImplementedError) as err:
        warnings.warn(_FORWARD_AD_FALLBACK_WARNING.format(err=str(err).splitlines()[0][:160]), stacklevel=3)
        return _double_backward(f, x, v), True


def _dense_hessian_reverse(f, x: torch.Tensor) -> torch.Tensor:
    """`hess f(x)` by reverse over reverse: one batched double backward over the identity's rows (no forward-mode AD,
    which some operations lack, e.g. the derivative of `silu`'s backward)."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        g = _reverse_gradient(f, xx)
        if g is None:  # the Hessian is 0
            return torch.zeros(x.numel(), x.numel(), dtype=x.dtype, device=x.device)
        eye = torch.eye(x.numel(), dtype=g.dtype, device=g.device)
        (H,) = torch.autograd.grad(g, xx, eye, is_grads_batched=True, allow_unused=True, materialize_grads=True)
    return H.detach()


def dense_hessian(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str = "auto"
) -> tuple[torch.Tensor, bool]:
    """`hess f(x)` as a matrix for a scalar function `f` of a flat vector, with the modes of
    [`hessian_vector_product`]: `"forward_over_reverse"` (`jacfwd` of `grad`, as the products are taken:
    `torch.func.hessian` differentiates `jacrev`, whose vmapped backward of `silu` has no forward-mode derivative),
    `"double_backward"` (reverse over reverse) or `"auto"` (forward over reverse, and reverse over reverse with a
    warning where forward-mode AD fails on an operation of `f`). Returns `(H, whether "auto" fell back)`."""
    if mode == "double_backward":
        return _dense_hessian_reverse(f, x), False
    if mode == "forward_over_reverse":
        return torch.func.jacfwd(torch.func.grad(f))(x), False
    if mode != "auto":
        raise ValueError(f"`mode` must be one of {HVP_MODES}, got {mode!r}.")
    try:
        return torch.func.jacfwd(torch.func.grad(f))(x), False
    except (RuntimeError, NotImplementedError) as err:
        warnings.warn(_FORWARD_AD_FALLBACK_WARNING.format(err=str(err).splitlines()[0][:160]), stacklevel=3)
        return _dense_hessian_reverse(f, x), True


@second_order_attention()
def hessian_vector_product(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor, mode: str = "auto"
) -> torch.Tensor:
    """`H(x) v` for a scalar function `f` of a flat vector.

    Args:
        mode (`str`): `"forward_over_reverse"` (`torch.func.jvp(torch.func.grad(f))`), `"double_backward"`
            (`autograd.grad` of the gradient), or `"auto"` (default): forward-over-reverse, and double backward (with a
            warning) where torch's forward-mode AD fails on an operation of `f`, as it does on `F.mse_loss` (a
            regression head's loss: "ZeroTensors are immutable" in torch 2.13) or `F.huber_loss` (no forward-mode
            derivative).
    """
    if x.shape != v.shape:
        raise ValueError(f"x and v must have the same shape, got {tuple(x.shape)} and {tuple(v.shape)}.")
    if mode == "auto":
        return _hvp_auto(f, x, v)[0]
    if mode == "forward_over_reverse":
        return _forward_over_reverse(f, x, v)
    if mode == "double_backward":
        return _double_backward(f, x, v)
    raise ValueError(f"`mode` must be one of {HVP_MODES}, got {mode!r}.")


# ----------------------------------------------------------------------------------------------------------------------
# cubic sub-problem solvers (M/6 convention: m(h) = g.h + h.Hh/2 + M/6 |h|^3)
# ----------------------------------------------------------------------------------------------------------------------
def cubic_model_value(g: torch.Tensor, hv: torch.Tensor, h: torch.Tensor, M: float) -> float:
    """`m(h) = <g,h> + 1/2 <Hh,h> + M/6 ||h||^3` given `hv = H h`."""
    h = h.double()
    return float(g.double() @ h + 0.5 * (hv.double() @ h) + M / 6.0 * h.norm() ** 3)


NON_FINITE_MESSAGE = "The cubic sub-problem got a non-finite gradient or Hessian; check g and H for inf/nan."


def _check_float_tensor(value, name: str, where: str) -> None:
    """`value` must be a real floating-point tensor: the solvers return the step in the dtype of `g`, so an integer `g`
    truncated it (`h = (-0.51, -1.02, -1.53)` came back as `(0, -1, -1)`), and a list failed with an AttributeError."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"`{name}` of {where} must be a floating-point tensor (e.g. float32 / float64), got {got}.")


def _check_M(M: float) -> None:
    if not _is_real(M) or not M > 0 or not math.isfinite(M):
        raise ValueError(f"The cubic regularisation constant `M` must be a positive finite number, got {M!r}.")


def _check_tol(tol: float, name: str = "tol") -> None:
    # NaN would end no loop (`x <= nan` is False) and a negative value none either: both ran to `max_iter` silently
    if not _is_real(tol) or not 0 <= tol < math.inf:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {tol!r}.")


def solve_cubic_exact(
    g: torch.Tensor, H: torch.Tensor, M: float, tol: float = 1e-15, max_iter: int = 400
) -> torch.Tensor:
    """Global minimiser of the cubic model by eigendecomposition (dimension up to a few thousand).

    With `H = Q diag(lam) Q^T` and `gt = Q^T g`, `h(r) = -Q (lam + M r / 2)^-1 gt`; the solution is the root
    `r > r_min = max(0, -2 lam_min / M)` of `||h(r)|| = r`. The root is searched in `s = r - r_min > 0`, where the
    denominators are `(lam - lam_min) + M s / 2` (for `lam_min < 0`; `lam + M s / 2` otherwise) and carry no
    cancellation, by bisection on `log s` (`||h|| - r` is decreasing in `s`): near the hard case (gradient almost
    orthogonal to the lowest eigenvector) the root lies extremely close to `r_min` and a bisection on `r` would return
    a step that misses most of the negative-curvature component. When no root exists above `s = 1e-300 s_max` (the
    *hard case*: `gt` has no component on the eigenspace of `lam_min < 0`) the solution is `h(r_min)` restricted to the
    other eigenvectors plus `tau * q_min` with `||h|| = r_min`.

    Args:
        g (`torch.Tensor`): gradient, shape `(d,)`.
        H (`torch.Tensor`): symmetric Hessian, shape `(d, d)`.
        M (`float`): cubic regularisation constant (`M/6` convention).
        tol (`float`): relative accuracy of the root `s` (a finite number >= 0; 0 runs all `max_iter` steps).
        max_iter (`int`): bisection steps, a positive int (each costs O(d)).

    Returns:
        `torch.Tensor`: the step `h` (dtype of `g`).
    """
    _check_float_tensor(g, "g", "solve_cubic_exact")
    _check_float_tensor(H, "H", "solve_cubic_exact")
    _check_M(M)
    if not _is_int(max_iter) or max_iter < 1:
        raise ValueError(f"`max_iter` must be a positive int (bisection steps), got {max_iter!r}.")
    _check_tol(tol)
    if g.dim() != 1 or H.shape != (g.numel(), g.numel()):
        raise ValueError(f"Need g of shape (d,) and H of shape (d, d), got {tuple(g.shape)} and {tuple(H.shape)}.")
    gd, Hd = g.double(), H.double()
    if not (torch.isfinite(gd).all() and torch.isfinite(Hd).all()):
        raise ValueError(NON_FINITE_MESSAGE)
    Hd = 0.5 * (Hd + Hd.T)
    lam, Q = torch.linalg.eigh(Hd)
    gt = Q.T @ gd
    lam_min = float(lam[0])
    r_min = max(0.0, -2.0 * lam_min / M)
    base = (lam - lam_min).clamp_min(0.0) if lam_min < 0 else lam  # lam + M r / 2 = base + M s / 2
    gnorm = float(gd.norm())
    if gnorm == 0.0 and lam_min >= 0:
        return torch.zeros_like(g)

    def coef(s: float) -> torch.Tensor:
        return gt / (base + M * s / 2.0)

    def phi(s: float) -> float:  # ||h(r_min + s)|| - (r_min + s), decreasing in s
        return float(coef(s).norm()) - (r_min + s)

    # ||h|| <= ||g|| / (M s / 2) <= s once s >= sqrt(2 ||g|| / M): a closed-form upper bracket
    hi = max(math.sqrt(2.0 * gnorm / M), 1e-150) * (1.0 + 1e-12)
    lo = max(hi * 1e-300, 1e-320)
    if gnorm == 0.0 or phi(lo) <= 0.0:
        if lam_min >= 0:
            return (-(Q @ coef(lo))).to(g.dtype)
        # hard case: no root above r_min; complete h(r_min) on the other eigenvectors with the lowest eigenvector
        scale = max(float(lam.abs().max()), 1e-300)
        bottom = base <= 1e-12 * scale
        rest = torch.where(bottom, torch.zeros_like(gt), gt / base.clamp_min(1e-300))
        h_rest = -(Q @ rest)
        tau = math.sqrt(max(r_min**2 - float(h_rest.norm()) ** 2, 0.0))
        sign = -1.0 if float(gt[0]) > 0 else 1.0
        return (h_rest + sign * tau * Q[:, 0]).to(g.dtype)
    llo, lhi = math.log(lo), math.log(hi)
    for _ in range(max_iter):
        mid = 0.5 * (llo + lhi)
        if phi(math.exp(mid)) > 0.0:
            llo = mid
        else:
            lhi = mid
        if lhi - llo <= tol:
            break
    return (-(Q @ coef(math.exp(lhi)))).to(g.dtype)


def _lanczos(hvp: HvpFn, v0: torch.Tensor, k: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """k-step Lanczos with full re-orthogonalisation. Returns (V (m, d), T (m, m), hvp_calls).

    It stops early when the subspace is invariant: the new residual `b` is at most `tol` times the largest `||H v_j||`
    seen (a lower bound on `||H||`), a test relative to the Hessian's scale, so that `f` and `s f` (with `s M`) give the
    same subspace and step. (It used to compare `b` with `tol * max(|a|, 1)`: below a Hessian scale of about 1e-10 every
    residual passed for a breakdown and the subspace stayed `span{g}`.)"""
    d = v0.numel()
    V = torch.zeros(min(k, d), d, dtype=torch.float64, device=v0.device)
    alphas, betas = [], []
    v = v0.double() / v0.double().norm()
    calls = 0
    h_scale = 0.0  # max_j ||H v_j||
    for j in range(min(k, d)):
        V[j] = v
        w = hvp(v.to(v0.dtype)).double()
        calls += 1
        h_scale = max(h_scale, float(w.norm()))
        a = float(w @ v)
        alphas.append(a)
        w = w - a * v - (betas[-1] * V[j - 1] if j > 0 else 0.0)
        for _ in range(2):  # full re-orthogonalisation
            w = w - V[: j + 1].T @ (V[: j + 1] @ w)
        b = float(w.norm())
        if j + 1 == min(k, d) or b <= tol * h_scale:
            break
        betas.append(b)
        v = w / b
    m = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64, device=v0.device))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64, device=v0.device)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    return V[:m], T, calls


def solve_cubic_lanczos(
    g: torch.Tensor, hvp: HvpFn, M: float, krylov_dim: int = 20, tol: float = 1e-10, generator=None
) -> tuple[torch.Tensor, int]:
    """Cubic step in the Krylov subspace `span{g, Hg, ..., H^(k-1) g}` (Lanczos, HVPs only).

    Solves `min_z ||g|| e1^T z + z^T T z / 2 + M/6 ||z||^3` exactly and returns `h = V z`. Lanczos stops early when the
    subspace becomes invariant. With `g = 0` a random start vector is used so negative curvature can still be found.
    A Krylov space started at `g` cannot see an eigenvector orthogonal to it (the hard case); use the exact solver for
    small problems.

    Returns:
        `(h, hvp_calls)`.
    """
    _check_float_tensor(g, "g", "solve_cubic_lanczos")
    if not callable(hvp):
        raise TypeError(f"`hvp` of solve_cubic_lanczos must be a function v -> H v, got {type(hvp).__name__}.")
    _check_M(M)
    if not _is_int(krylov_dim) or krylov_dim < 1:
        raise ValueError(f"`krylov_dim` must be a positive int, got {krylov_dim!r}.")
    _check_tol(tol)
    gn = float(g.double().norm())
    start = g if gn > 0 else torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
    V, T, calls = _lanczos(hvp, start, krylov_dim, tol)
    gk = V @ g.double()
    z = solve_cubic_exact(gk, T, M)
    return (V.T @ z).to(g.dtype), calls


def solve_cubic_gd(
    g: torch.Tensor,
    hvp: HvpFn,
    M: float,
    lipschitz: float | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
    step_scale: float = 0.5,
    perturbation: float = 1e-3,
    seed: int = 0,
) -> tuple[torch.Tensor, int]:
    """Gradient descent on the cubic model from the Cauchy point (Carmon & Duchi), one HVP per iteration.

    Cauchy point: `h = -R g/||g||`, `R = -k/M + sqrt((k/M)^2 + 2||g||/M)`, `k = g^T H g / ||g||^2`, plus a seeded
    random component of relative size `perturbation` (so the iterates can leave the span of `g` when it is almost
    orthogonal to the most negative eigenvector, the near-hard case; the model and its minimiser are unchanged). Then
    `h <- h - eta (g + H h + M/2 ||h|| h)` with `eta = step_scale / (L + M ||h||)`, `L + M ||h||` bounding the
    model's curvature; `L` (a bound on `||H||`) is estimated with 10 power iterations unless given. Stops when
    `||grad m(h)|| <= tol * ||g||` or after `max_iter` iterations.

    `g = 0` (an exact saddle or minimum of `f`): `h = 0` is a stationary point of the model, and gradient descent
    started there would never move. As Carmon & Duchi do, the sub-problem is then solved for a seeded random gradient
    `g~` of norm `perturbation**2 * L**2 / M` (`L` from power iterations started at a random vector); the result is
    returned when it lowers the *unperturbed* model below 0 (it found negative curvature), else `h = 0` (the exact
    answer when `H >= 0`; also what is returned when `max_iter` iterations do not suffice to leave the saddle, e.g.
    when the negative eigenvalue is tiny against `L`). That costs up to `max_iter` + 12 HVPs (about a hundred at
    a minimum with `H > 0`, where `g = 0` used to return at once).

    Cost of the defaults (docs/optim.md): on the problems of `tests/optim/test_cubic_newton.py` (random indefinite at
    d = 20, 50, and a near-hard case whose bottom eigenvalue -8 is well separated from the rest, -2..10) the model
    value came within 1e-3 (relative) of the exact solver's after 61-246 iterations (HVPs). The tolerance stopped the
    loop early only on the well-separated near-hard case (162 and 180 HVPs); the random problems ran on to the cap
    (511 HVPs: `max_iter`, 10 power iterations, the Cauchy point), already within 1e-3. Near the hard case with a
    bottom eigenvalue that is not well separated, 1e-3 is not reached: with eigenvalues evenly spread over [-3, 5]
    (d = 20, 50) and a component of 1e-9 on the bottom eigenvector, all 20 audited problems ran to the cap and 8 of
    them stayed more than 1e-3 (relative) short of the exact model value (up to 0.15). Away from the hard case the
    iterations needed grow with `||H|| / (M ||h*||)`: on positive semi-definite problems at d = 20 the defaults fell
    5-7% short at a ratio of about 130 and 92-95% short at about 4e3 (docs/optim.md). Use `solve_cubic_exact`
    (dense) or more iterations where that matters.

    Raises:
        `ValueError`: when `g` or a Hessian-vector product is not finite (as `solve_cubic_exact` does).

    Returns:
        `(h, hvp_calls)`.
    """
    _check_float_tensor(g, "g", "solve_cubic_gd")
    if not callable(hvp):
        raise TypeError(f"`hvp` of solve_cubic_gd must be a function v -> H v, got {type(hvp).__name__}.")
    _check_M(M)
    if not _is_int(max_iter) or max_iter < 0:
        raise ValueError(f"`max_iter` must be a non-negative int, got {max_iter!r}.")
    if not _is_real(step_scale) or not 0 < step_scale <= 1:
        raise ValueError(f"`step_scale` must lie in (0, 1], got {step_scale!r}.")
    _check_tol(tol)
    _check_tol(perturbation, "perturbation")
    if lipschitz is not None and (not _is_real(lipschitz) or not 0 < lipschitz < math.inf):
        raise ValueError(
            f"`lipschitz` must be a finite number > 0 (a bound on ||H||), or None to estimate it, got {lipschitz!r}."
        )
    gd = g.double()
    gn = float(gd.norm())
    if not math.isfinite(gn):
        raise ValueError(NON_FINITE_MESSAGE)
    calls = 0

    def H(v: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return hvp(v.to(g.dtype)).double()

    def finite(x: float) -> float:
        if not math.isfinite(x):
            raise ValueError(NON_FINITE_MESSAGE)
        return x

    saddle = gn == 0.0
    if saddle and max_iter == 0:
        return torch.zeros_like(g), 0
    if saddle:
        gen = torch.Generator().manual_seed(seed + 1)
        u = torch.randn(gd.shape, generator=gen, dtype=gd.dtype).to(gd.device)
        u = u / u.norm()
    if lipschitz is None:
        v = u if saddle else gd / gn
        est = 0.0
        for _ in range(10):
            w = H(v)
            est = finite(float(w.norm()))
            if est == 0:
                break
            v = w / est
        # the estimate as it is (an absolute floor of 1e-12 made the steps 0.5 / (1e-12 + M ||h||) on a model whose
        # Hessian is smaller than that, too short to reach the minimiser: scale f and M by 1e-14 and the step fell
        # 24% short of the model decrease); the floor only where the power iterations saw no curvature at all
        lipschitz = est if est > 0 else 1e-12
    g_orig = gd
    if saddle:
        # Carmon & Duchi: a small random gradient breaks the symmetry of the saddle h = 0 of the model
        gd = (perturbation**2 * lipschitz**2 / M) * u
        gn = float(gd.norm())
        if gn == 0.0 or not math.isfinite(gn):
            return torch.zeros_like(g), calls
    kappa = finite(float(gd @ H(gd))) / gn**2
    R = -kappa / M + math.sqrt((kappa / M) ** 2 + 2.0 * gn / M)
    h = -R * gd / gn
    if perturbation > 0:
        z = torch.randn(gd.shape, generator=torch.Generator().manual_seed(seed), dtype=gd.dtype).to(gd.device)
        h = h + perturbation * R * z / z.norm()
    for _ in range(max_iter):
        hn = float(h.norm())
        grad = gd + H(h) + (M / 2.0) * hn * h
        gnorm = finite(float(grad.norm()))
        if gnorm <= tol * gn:
            break
        h = h - (step_scale / (lipschitz + M * hn)) * grad
    if saddle:
        value = finite(cubic_model_value(g_orig, H(h), h, M))
        if not value < 0.0:
            return torch.zeros_like(g), calls
    return h.to(g.dtype), calls


# ----------------------------------------------------------------------------------------------------------------------
# the optimizer
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class CubicStepStats:
    """What one `CubicNewton.step` did. `M` is the constant the step was solved with (after adaptive doubling), in the
    optimizer's `cubic_convention` (as passed; with `"M/3"` the solvers used `2 M`); `model_decrease` is `-m(h)`."""

    loss: float
    model_decrease: float
    step_norm: float
    M: float
    alpha: float
    beta: float
    grad_evals: int
    hess_evals: int
    hvp_evals: int
    fn_evals: int


def _copy_tensors(obj: Any) -> Any:
    """`obj` with every tensor in it (in dicts, lists, tuples) replaced by a detached copy."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, Mapping):
        return {k: _copy_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_copy_tensors(v) for v in obj)
    return obj


MOMENTUM_TYPES = ("none", "ema", "extrapolated", "hessian_corrected")
HESSIAN_MODES = ("dense", "window", "fresh")
# Slack of adaptive M's acceptance test f(x + h) <= f(x) - decrease, in units of eps(dtype) * |f(x)| (rounding).
ACCEPTANCE_ULPS = 16
SOLVERS = ("auto", "exact", "lanczos", "gd")


def _warn_if_data_parallel() -> None:
    """Warn when built in one of several processes of a process group (a DDP or `accelerate launch` run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        warnings.warn(
            f"CubicNewton was built in a process group of {dist.get_world_size()} processes. Its step differentiates "
            "the closure's function itself (torch.func gradients and Hessian-vector products), so under data "
            "parallelism (DDP) it sees this rank's batch only: nothing is all-reduced, and the ranks' parameters drift "
            "apart without an error. Run CubicNewton in one process (`CubicNewtonTrainer` refuses more), or make the "
            "closure's loss the mean over ranks with differentiable collectives (torch.distributed.nn.functional).",
            stacklevel=3,
        )


def _check_options(
    M,
    lr,
    momentum,
    alpha,
    beta,
    alpha_power,
    beta_power,
    max_extrapolation,
    hessian,
    hessian_window,
    solver,
    krylov_dim,
    gd_iters,
    M_rule,
    M_min,
    M_max,
    max_step_norm,
    cubic_convention,
    hvp_mode,
) -> None:
    """Validate `CubicNewton`'s options: its constructor arguments, or a param group with the defaults merged in."""
    _check_M(M)
    if momentum not in MOMENTUM_TYPES:
        raise ValueError(f"`momentum` must be one of {MOMENTUM_TYPES}, got {momentum!r}.")
    if hessian not in HESSIAN_MODES:
        raise ValueError(f"`hessian` must be one of {HESSIAN_MODES}, got {hessian!r}.")
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {SOLVERS}, got {solver!r}.")
    if solver == "exact" and hessian != "dense":
        raise ValueError("solver='exact' needs hessian='dense' (a matrix); use solver='lanczos' or 'gd'.")
    for name, val in (("alpha", alpha), ("beta", beta)):
        if not _is_real(val) or not 0.0 < val <= 1.0:
            raise ValueError(f"`{name}` must lie in (0, 1], got {val!r}.")
    # NaN would pass a `val < 0` test and act as 0 (max(alpha, t^-nan) is alpha) or as no cap (min(r, nan) is r)
    for name, val in (("alpha_power", alpha_power), ("beta_power", beta_power)):
        if not _is_real(val) or not 0 <= val < math.inf:
            raise ValueError(f"`{name}` must be a finite number >= 0 (0: constant weight), got {val!r}.")
    if not _is_real(max_extrapolation) or not 0 <= max_extrapolation < math.inf:
        raise ValueError(
            f"`max_extrapolation` must be a finite number >= 0 (the cap on (1-a)/a), got {max_extrapolation!r}."
        )
    if not _is_real(lr) or not 0 < lr < math.inf:
        raise ValueError(f"`lr` must be a positive finite number, got {lr!r}.")
    if M_rule not in ("fixed", "adaptive"):
        raise ValueError(f"`M_rule` must be 'fixed' or 'adaptive', got {M_rule!r}.")
    if M_rule == "adaptive" and momentum != "none":
        raise ValueError(
            f"M_rule='adaptive' needs momentum='none', got momentum={momentum!r}: its acceptance test "
            "f(x + h) <= f(x) + m(h) only holds for a model built from the gradient at x (deterministic use). "
            "Use M_rule='fixed' with momentum, or momentum='none' with adaptive M."
        )
    if not _is_int(krylov_dim) or krylov_dim < 1:
        raise ValueError(f"`krylov_dim` must be a positive int, got {krylov_dim!r}.")
    if not _is_int(gd_iters) or gd_iters < 0:
        raise ValueError(f"`gd_iters` must be a non-negative int, got {gd_iters!r}.")
    for name, val in (("M_min", M_min), ("M_max", M_max)):
        if not _is_real(val) or not math.isfinite(val):
            raise ValueError(f"`{name}` must be a finite number, got {val!r}.")
    if not 0 < M_min <= M <= M_max:
        raise ValueError(f"Need 0 < M_min <= M <= M_max, got M_min={M_min}, M={M}, M_max={M_max}.")
    if cubic_convention not in ("M/6", "M/3"):
        raise ValueError(f"`cubic_convention` must be 'M/6' or 'M/3', got {cubic_convention!r}.")
    if hvp_mode not in HVP_MODES:
        raise ValueError(f"`hvp_mode` must be one of {HVP_MODES}, got {hvp_mode!r}.")
    if not _is_int(hessian_window) or hessian_window < 1:
        raise ValueError(f"`hessian_window` must be a positive int, got {hessian_window!r}.")
    if max_step_norm is not None and (not _is_real(max_step_norm) or not 0 < max_step_norm < math.inf):
        raise ValueError(f"`max_step_norm` must be a finite number > 0, or None for no cap, got {max_step_norm!r}.")


class CubicNewton(Optimizer):
    r"""Stochastic cubic-regularised Newton with momentum (Chayti, Doikov & Jaggi, 2025; see docs/optim.md).

    Each `step(closure)` calls `closure()` once; it must return the loss function of the *flat* parameter vector on
    the current sample, `f(x) -> scalar` (e.g. from `make_flat_loss`), or a pair `(f_grad, f_hess)` of functions on two
    independent samples. `x` is the optimizer's parameters flattened in the order given: a `make_flat_loss` function
    over other tensors, or over the same in another order, is refused with a `ValueError`. With `t` the step counter (from 1), `a_t`, `b_t` the momentum weights (1 at `t = 1`):

    - gradient estimate (`momentum`):
      `none`: `g_t = grad f(x_t)`;
      `ema`: `g_t = (1-a_t) g_{t-1} + a_t grad f(x_t)`;
      `extrapolated`: the same at `y_t = x_t + min((1-a_t)/a_t, max_extrapolation) (x_t - x_{t-1})`;
      `hessian_corrected`: `g_t = (1-a_t)(g_{t-1} + H (x_t - x_{t-1})) + a_t grad f(x_t)`, `H` the Hessian estimate
      `H_t` below for `hessian="dense"` (a matrix-vector product), else the current sample's `hess f(x_t)` (one
      extra HVP).
    - Hessian estimate (`hessian`): `dense` keeps `H_t = (1-b_t) H_{t-1} + b_t hess f(x_t)` as a matrix (small
      models); `window` applies `H_t v = sum_s w_s hess f_s(x_s) v` over the last `hessian_window` samples with
      geometric weights `w_s ~ b (1-b)^(t-s)` renormalised (HVP-only; a resume is exact when each closure's data is
      given as `set_closure(closure, sample=...)` and `rebuild_window` is called after loading); `fresh` uses
      `hess f(x_t)` alone (no Hessian momentum). `momentum="none"` forces `b_t = 1`.
    - step: `h_t = argmin m(h)` by the chosen `solver`, then `x_{t+1} = x_t + lr * h_t` (`lr` from the param group, so
      LR schedulers scale the step), optionally capped at `max_step_norm`.
    - non-finite samples: a sample whose gradient, Hessian or Hessian-vector products are not finite makes `step`
      raise a `ValueError` (every solver), and a step that raises leaves the parameters and all optimizer state as
      they were, so the caller can skip the sample and continue.
    - `M_rule="fixed"` keeps `M`; `"adaptive"` (deterministic use, `momentum="none"` only) doubles `M` until
      `f(x + h) <= f(x) + m(h)` on the current sample, up to rounding (`16 eps |f(x)|` in the parameters' dtype; a
      step shorter than `16 eps ||x||` is accepted untested), and halves it after each accepted step (within
      `[M_min, M_max]`).

    Args:
        params (iterable): parameters (one param group, of one dtype, float32 or float64: bfloat16/float16 are
            refused, their Hessian-vector products are too noisy; tensors that do not require grad are left out, as in
            `make_flat_loss`). `add_param_group` after construction is refused.
        M (`float`, *optional*, defaults to 1.0): cubic regularisation constant.
        lr (`float`, *optional*, defaults to 1.0): step multiplier.
        momentum (`str`, *optional*, defaults to `"hessian_corrected"`): one of `none`, `ema`, `extrapolated`,
            `hessian_corrected`. The default is the Hessian-corrected estimator: on deterministic problems it
            converged in every audited start with a dense Hessian where `extrapolated` (implicit gradient transport,
            the factor `(1-a)/a` = 9 at the default `a`) diverged in 40 of 48, and at batch 1 it lowered the
            gradient-norm plateau most (docs/optim.md). `extrapolated` is our reading of the paper's "special version
            of momentum" and what the reproduction runs; plain `ema` is biased at batch 1.
        alpha (`float`, *optional*, defaults to 0.1): gradient momentum weight (floor of the schedule).
        beta (`float`, *optional*, defaults to 0.1): Hessian momentum weight (floor of the schedule).
        alpha_power (`float`, *optional*, defaults to 0.0): `a_t = max(alpha, t^-alpha_power)` (0: constant after
            the first step).
        beta_power (`float`, *optional*, defaults to 0.0): the same for `b_t`.
        max_extrapolation (`float`, *optional*, defaults to 10.0): cap on `(1-a)/a` for `extrapolated`.
        hessian (`str`, *optional*, defaults to `"dense"`): `dense`, `window` or `fresh`.
        hessian_window (`int`, *optional*, defaults to 5): samples kept by `hessian="window"`.
        solver (`str`, *optional*, defaults to `"auto"`): `exact` (needs a dense Hessian), `lanczos`, `gd`; `auto` =
            exact for `hessian="dense"`, else lanczos.
        krylov_dim (`int`, *optional*, defaults to 20): Lanczos subspace size.
        gd_iters (`int`, *optional*, defaults to 500): maximum iterations (HVPs) of the gradient-descent solver.
        M_rule (`str`, *optional*, defaults to `"fixed"`): `fixed` or `adaptive` (needs `momentum="none"`).
        M_min, M_max (`float`, *optional*): bounds of the adaptive rule, on `M` as passed (in its
            `cubic_convention`).
        max_step_norm (`float`, *optional*): cap on `||lr * h||`.
        cubic_convention (`str`, *optional*, defaults to `"M/6"`): `"M/6"` or `"M/3"` (cubic term `M/3 ||h||^3`;
            the solvers get `2 M` in their `M/6` convention). `M`, `M_min`, `M_max`, `param_groups[0]["M"]` and
            `last_stats.M` are all in this convention.
        hvp_mode (`str`, *optional*, defaults to `"auto"`): how Hessian-vector products, and the dense Hessian of
            `hessian="dense"` (`dense_hessian`: `jacfwd(grad)` or batched double backward), are taken (see
            [`hessian_vector_product`]): `"auto"` (forward-over-reverse, or double backward from the first HVP on
            where torch's forward-mode AD fails on the loss, e.g. `F.mse_loss`), `"forward_over_reverse"` or
            `"double_backward"`.
        dense_max_dim (`int`, *optional*, defaults to 4096): refuse `hessian="dense"` above this dimension.
    """

    def __init__(
        self,
        params,
        M: float = 1.0,
        lr: float = 1.0,
        momentum: str = "hessian_corrected",
        alpha: float = 0.1,
        beta: float = 0.1,
        alpha_power: float = 0.0,
        beta_power: float = 0.0,
        max_extrapolation: float = 10.0,
        hessian: str = "dense",
        hessian_window: int = 5,
        solver: str = "auto",
        krylov_dim: int = 20,
        gd_iters: int = 500,
        M_rule: str = "fixed",
        M_min: float = 1e-6,
        M_max: float = 1e8,
        max_step_norm: float | None = None,
        cubic_convention: str = "M/6",
        hvp_mode: str = "auto",
        dense_max_dim: int = 4096,
    ):
        options = dict(
            M=M,
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            beta=beta,
            alpha_power=alpha_power,
            beta_power=beta_power,
            max_extrapolation=max_extrapolation,
            hessian=hessian,
            hessian_window=hessian_window,
            solver=solver,
            krylov_dim=krylov_dim,
            gd_iters=gd_iters,
            M_rule=M_rule,
            M_min=M_min,
            M_max=M_max,
            max_step_norm=max_step_norm,
            cubic_convention=cubic_convention,
            hvp_mode=hvp_mode,
        )
        # numpy numbers (a sweep over np.linspace) as the Python ones: torch.load(weights_only=True) and the
        # safetensors + JSON checkpoint of CubicNewtonTrainer refuse numpy scalars in the saved param group
        options = {k: _python_scalar(v) for k, v in options.items()}
        _check_options(**options)
        if not _is_int(dense_max_dim) or dense_max_dim < 1:
            raise ValueError(f"`dense_max_dim` must be a positive int, got {dense_max_dim!r}.")
        defaults = {**options, "M": float(options["M"])}
        super().__init__(params, defaults)
        _warn_if_data_parallel()
        self._hvp_double_backward = False  # hvp_mode "auto": forward-mode AD failed on the loss, double backward
        self._flat = FlatParameters(self.param_groups[0]["params"])
        dtype = self._flat.params[0].dtype
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"CubicNewton needs float32 (or float64) parameters, got {dtype}: Hessian-vector products in low "
                "precision are too noisy for the cubic model. Convert the model with `model.float()` (or the tensors "
                "with `.float()`) before building the optimizer."
            )
        if self.param_groups[0]["hessian"] == "dense" and self._flat.dim > dense_max_dim:
            raise ValueError(
                f"hessian='dense' stores a {self._flat.dim}x{self._flat.dim} matrix (> dense_max_dim={dense_max_dim}); "
                "use hessian='window' or 'fresh' with solver='lanczos' for large models."
            )
        # (loss function, point, sample) of the last `hessian_window` steps; `sample` is what `set_closure` was given
        self._window: list[tuple[Callable, torch.Tensor, Any]] = []
        self._window_to_rebuild: list[tuple[torch.Tensor, Any]] = []
        self._pending_closure: Callable | None = None
        self._pending_sample: Any = None
        self.last_stats: CubicStepStats | None = None

    def add_param_group(self, param_group: dict) -> None:
        """Add the single param group (torch's `Optimizer.__init__` calls this); any further group is refused.

        Tensors that do not require grad are left out, as `make_flat_loss` leaves them out of the flat vector, so
        `CubicNewton(model.parameters())` works with frozen parameters.
        """
        if self.param_groups:
            raise ValueError(
                "CubicNewton takes a single parameter group: M, the momenta and the flat parameter vector are global "
                "and fixed at construction. Build a new CubicNewton over all parameters instead of add_param_group. "
                "(A transformers Trainer given optimizer_cls_and_kwargs=(CubicNewton, ...) passes its weight-decay "
                "groups: train with hf_ext.optim.CubicNewtonTrainer instead.)"
            )
        # a group's own values replace the constructor's: checked like them (they used to run unchecked: a misspelt
        # momentum ran as "ema", alpha=5 or M_rule="adaptive" with momentum ran, solver="exact" without a dense
        # Hessian failed inside step())
        options = {k: _python_scalar(v) for k, v in param_group.items() if k in self.defaults}
        if options:
            try:
                _check_options(**{**self.defaults, **options})
            except ValueError as err:
                raise ValueError(
                    f"{err} (a value of the param group given to CubicNewton; CubicNewton has a single group, so the "
                    "constructor's keyword arguments set the same options)"
                ) from None
            param_group = {**param_group, **options}
        weight_decay = param_group.get("weight_decay", 0)
        if not (_is_real(weight_decay) and weight_decay == 0):
            raise ValueError(
                f"A CubicNewton param group has weight_decay={weight_decay!r}, which it would ignore: CubicNewton has "
                "no weight decay. Leave it out (or 0) and add an L2 term to the loss function if you need one. (A "
                "transformers Trainer given optimizer_cls_and_kwargs=(CubicNewton, ...) passes its weight-decay groups: "
                "train with hf_ext.optim.CubicNewtonTrainer instead.)"
            )
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        params = [p for p in params if not isinstance(p, torch.Tensor) or p.requires_grad]
        if not params:
            raise ValueError("CubicNewton got no parameter that requires grad.")
        if any(_is_dtensor(p) for p in params):
            raise ValueError(
                "CubicNewton got sharded (DTensor) parameters, e.g. from FSDP2's `fully_shard` or tensor parallelism: "
                "its flat parameter vector, dense Hessian and Hessian-vector products (torch.func on the whole model) "
                "need every parameter whole on one process, and its step does not all-reduce. Build CubicNewton over "
                "the parameters of the unsharded model in a single process (no FSDP)."
            )
        super().add_param_group({**param_group, "params": params})

    # -- state helpers --------------------------------------------------------------------------------------------
    @property
    def _st(self) -> dict:
        return self.state[self.param_groups[0]["params"][0]]

    def set_closure(self, closure: Callable, sample: Any = None) -> None:
        """Register the closure used by the next `step()` called without one (what `CubicNewtonTrainer` does).

        Args:
            closure (`Callable`): as for `step`.
            sample (*optional*): the data the closure's loss function is built from (e.g. the batch, a dict of
                tensors). With `hessian="window"` it is kept with the window and saved in `state_dict()`, so that
                `rebuild_window` can rebuild the past loss functions after a resume and the run continues exactly.
        """
        self._pending_closure = closure
        self._pending_sample = sample

    def state_dict(self) -> dict:
        """torch's optimizer state, plus (for `hessian="window"`) the window's points and samples under `"window"`, and
        whether `hvp_mode="auto"` fell back to double backward (`"hvp_double_backward"`)."""
        sd = super().state_dict()
        # the shapes of the tensors the flat vectors are laid out over, in order: checked by `load_state_dict`
        sd["flat_layout"] = [list(shape) for shape in self._flat.shapes]
        # hvp_mode "auto" fell back to double backward on this loss: a resume keeps to it (no second failed
        # forward-mode attempt and warning)
        sd["hvp_double_backward"] = self._hvp_double_backward
        window = [(x, s) for _, x, s in self._window] or self._window_to_rebuild  # loaded, not yet rebuilt: kept
        if self.param_groups[0]["hessian"] == "window" and window:
            # copies: a sample's tensors may share memory (labels = input_ids, one batch every step), which
            # safetensors refuses to store
            sd["window"] = {
                "points": [x.detach().clone() for x, _ in window],
                "samples": [_copy_tensors(s) for _, s in window],
            }
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a `state_dict()`. A saved `hessian="window"` window whose samples were recorded is kept until
        `rebuild_window` turns the samples back into loss functions; without that call (or without samples) the
        window refills from the next step, and the continuation is not bit-exact (a warning says so)."""
        state_dict = dict(state_dict)
        window = state_dict.pop("window", None)
        double_backward = bool(state_dict.pop("hvp_double_backward", False))  # absent in states of an older hf_ext
        self._check_loaded_layout(state_dict.pop("flat_layout", None), state_dict, window)
        super().load_state_dict(state_dict)
        self._hvp_double_backward = double_backward
        self._window = []
        self._window_to_rebuild = []
        if window is None and self.param_groups[0]["hessian"] == "window" and int(self._st.get("step", 0)) > 0:
            warnings.warn(
                "CubicNewton: this hessian='window' state holds no window (saved by an older hf_ext); the window "
                "refills from the next step and the run does not continue exactly.",
                stacklevel=2,
            )
        if window is not None:
            ref = self._flat.params[0]
            self._window_to_rebuild = [
                (x.to(device=ref.device), s) for x, s in zip(window["points"], window["samples"])
            ]

    def _check_loaded_layout(self, layout: list | None, state_dict: dict, window: dict | None) -> None:
        """Refuse, before anything is loaded, a state whose flat vectors (gradient and Hessian estimates, previous
        point, window points) are laid out over other tensors than this optimizer's: torch's `load_state_dict` checks
        only the number of tensors, and the estimates would be applied to the wrong coordinates (other order) or fail
        inside `step()` with a bare size mismatch (other sizes). `layout` is the saved tensor shapes (none in states
        of an older hf_ext: then only the sizes are checked)."""
        mine = [list(shape) for shape in self._flat.shapes]
        d = self._flat.dim
        problem = None
        if layout is not None and [list(shape) for shape in layout] != mine:
            problem = f"it was saved over tensors of shapes {layout}, this optimizer has {mine}"
        else:
            entries = dict((state_dict.get("state") or {}).get(0, {}))
            if window is not None:
                entries.update({f"window point {i}": x for i, x in enumerate(window.get("points", []))})
            for key, value in entries.items():
                if not isinstance(value, torch.Tensor) or value.dim() == 0:
                    continue
                expected = (d, d) if key == "hessian_estimate" else (d,)
                if tuple(value.shape) != expected:
                    problem = (
                        f"its {key!r} has shape {tuple(value.shape)}, this optimizer's {d} parameter entries need "
                        f"{expected}"
                    )
                    break
        if problem is not None:
            raise ValueError(
                f"CubicNewton.load_state_dict: this state does not belong to this optimizer's parameters: {problem}. "
                "Its gradient and Hessian estimates are flat vectors over the parameters it was saved with, in their "
                "order; load it into a CubicNewton over the same parameters in the same order (e.g. "
                "CubicNewton(model.parameters()) of the same model), or start the optimizer afresh."
            )

    def rebuild_window(self, make_loss: Callable[[Any], Callable]) -> int:
        """Rebuild the `hessian="window"` loss functions of a loaded state from their samples.

        Args:
            make_loss (`Callable`): `make_loss(sample) -> f`, the loss function of the flat parameter vector for one
                saved sample (the same function the step's closure returned for it).

        Returns:
            `int`: the number of window entries rebuilt (0 when the state had no window or its samples were not
            recorded; then the window refills).
        """
        if not callable(make_loss):
            raise TypeError(f"rebuild_window needs a callable make_loss(sample) -> f, got {type(make_loss).__name__}.")
        pending, self._window_to_rebuild = self._window_to_rebuild, []
        if not pending or any(s is None for _, s in pending):
            if pending:
                self._window_to_rebuild = pending  # step() warns and refills
            return 0
        self._window = [(make_loss(s), x, s) for x, s in pending]
        return len(self._window)

    def _check_layout(self, fn: Callable) -> None:
        """Refuse a loss function from `make_flat_loss` (it carries its `FlatParameters` as `fn.flat`) whose flat
        vector is not this optimizer's: other tensors, or the same in another order, would put the gradient and the
        Hessian of one parameter on the coordinates of another. A function without `flat` is not checked here (a
        `FlatParameters` of another size refuses the optimizer's vector in `split`)."""
        layout = getattr(fn, "flat", None)
        if not isinstance(layout, FlatParameters):
            return
        mine = self._flat.params
        if len(layout.params) == len(mine) and all(a is b for a, b in zip(layout.params, mine)):
            return
        ids = {id(p) for p in mine}
        same_set = len(layout.params) == len(mine) and all(id(p) in ids for p in layout.params)
        names = layout.names or [f"tensor {i}" for i in range(len(layout.params))]
        where = next(
            (i for i, (a, b) in enumerate(zip(layout.params, mine)) if a is not b), min(len(layout.params), len(mine))
        )
        at = names[where] if where < len(names) else "(none: the optimizer holds more)"
        what = (
            "the same tensors in another order"
            if same_set
            else f"other tensors ({len(layout.params)} tensors, {layout.dim} entries, against the optimizer's "
            f"{len(mine)} tensors, {self._flat.dim} entries)"
        )
        raise ValueError(
            f"CubicNewton.step: the closure's loss function (make_flat_loss) differentiates {what}; the first "
            f"difference is at position {where} ({at}). Its gradient and Hessian would be applied to the wrong "
            "parameters. make_flat_loss(model, batch) takes the model's trainable parameters in named_parameters() "
            "order: build the optimizer over exactly those, CubicNewton([p for p in model.parameters() if "
            "p.requires_grad], ...) (or CubicNewton(model.parameters(), ...))."
        )

    @staticmethod
    def _weight(base: float, power: float, t: int) -> float:
        if t == 1:
            return 1.0
        return max(base, t ** (-power)) if power > 0 else base

    # -- the step -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    @second_order_attention()  # also for a closure's own loss function calling torch's SDPA (not via make_flat_loss)
    def step(self, closure: Callable | None = None):
        """One cubic Newton step on the sample whose loss function `closure()` returns (see the class docstring).

        Raises a `ValueError` when the sample's gradient, its Hessian (dense) or one of its Hessian-vector products is
        not finite, or when the step comes out non-finite, for every solver. A step that raises (for any reason)
        changes nothing: the step counter, the gradient and Hessian estimates, the window, `M`, the counters,
        `last_stats` and the parameters are left as they were, so training can go on with the next sample.
        """
        sample = self._pending_sample if closure is None else None
        closure = closure if closure is not None else self._pending_closure
        self._pending_closure = None
        self._pending_sample = None
        if self._window_to_rebuild:
            warnings.warn(
                "CubicNewton: the loaded hessian='window' state was not rebuilt (call rebuild_window(make_loss) after "
                "load_state_dict, with samples recorded through set_closure(closure, sample=...)); the window refills "
                "from this step and the run does not continue exactly.",
                stacklevel=2,
            )
        if closure is None:
            raise ValueError(
                "CubicNewton.step needs a closure returning f(flat_params) for the current sample "
                "(or call set_closure() first). A transformers Trainer calls step() without one: train with "
                "hf_ext.optim.CubicNewtonTrainer, which builds the closure from each batch."
            )
        fns = closure()
        f_grad, f_hess = fns if isinstance(fns, tuple) else (fns, fns)
        if not callable(f_grad) or not callable(f_hess):
            raise TypeError("The closure must return f(x) or a pair (f_grad, f_hess) of functions of the flat vector.")
        for fn in (f_grad, f_hess):
            self._check_layout(fn)
        # Everything below is computed into locals; the optimizer state is written only once the step is known to be
        # finite (the commit at the end), so a step that raises leaves the optimizer exactly as it was.
        group = self.param_groups[0]
        st = self._st
        t = int(st.get("step", 0)) + 1
        flat = self._flat
        x = flat.flatten()
        x_prev = st.get("x_prev")
        mom = group["momentum"]
        a = 1.0 if mom == "none" else self._weight(group["alpha"], group["alpha_power"], t)
        b = 1.0 if mom == "none" else self._weight(group["beta"], group["beta_power"], t)
        conv = 2.0 if group["cubic_convention"] == "M/3" else 1.0  # M/3 ||h||^3 = (2M)/6 ||h||^3
        M_eff = group["M"] * conv
        counts = dict(grad=0, hess=0, hvp=0, fn=0)
        mode = group["hvp_mode"]
        new_state: dict[str, Any] = {}

        def refuse_non_finite(value: torch.Tensor) -> torch.Tensor:
            if not bool(torch.isfinite(value).all()):
                raise ValueError(
                    f"{NON_FINITE_MESSAGE} CubicNewton.step refused this sample (step {t}); the parameters and the "
                    "optimizer state are unchanged."
                )
            return value

        def hvp_at(fn, point, v):
            counts["hvp"] += 1
            if mode == "auto" and self._hvp_double_backward:  # forward-mode AD failed on this loss before
                return refuse_non_finite(_double_backward(fn, point, v))
            if mode == "auto":
                hv, self._hvp_double_backward = _hvp_auto(fn, point, v)
                return refuse_non_finite(hv)
            return refuse_non_finite(hessian_vector_product(fn, point, v, mode))

        # Hessian estimate as a matrix or an HVP operator
        hess_mode = group["hessian"]
        H = None
        if hess_mode == "dense":
            # hvp_mode as for the products: "auto" falls back to reverse over reverse where forward-mode AD fails
            # (e.g. silu's backward, in every Llama MLP), and keeps to it once it did
            dense_mode = "double_backward" if (mode == "auto" and self._hvp_double_backward) else mode
            H_new, fell_back = dense_hessian(f_hess, x, dense_mode)
            self._hvp_double_backward = self._hvp_double_backward or fell_back
            H_new = refuse_non_finite(H_new.reshape(flat.dim, flat.dim))
            counts["hess"] += 1
            H_prev = st.get("hessian_estimate")
            H = H_new if (H_prev is None or b >= 1.0) else (1 - b) * H_prev + b * H_new
            # row-major, as a checkpoint restores it: the dense Hessian comes in a transposed layout, and the
            # products with H (solver, HVPs) round differently per layout, so a resumed run would drift by an ulp
            H = H.contiguous()
            new_state["hessian_estimate"] = H.detach().clone()
            window = self._window  # unused by a dense Hessian
            hvp = lambda v: H @ v.to(H.dtype)  # noqa: E731
        elif hess_mode == "window" and b < 1.0:
            window = [*self._window, (f_hess, x.clone(), sample)][-group["hessian_window"] :]
            n = len(window)
            w = torch.tensor([b * (1 - b) ** (n - 1 - i) for i in range(n)], dtype=torch.float64)
            w = (w / w.sum()).tolist()

            def hvp(v):
                return sum(wi * hvp_at(fi, xi, v) for wi, (fi, xi, _) in zip(w, window))
        else:
            window = [(f_hess, x.clone(), sample)]

            def hvp(v):
                return hvp_at(f_hess, x, v)

        # gradient estimate
        with torch.enable_grad():
            if mom == "extrapolated" and x_prev is not None and a < 1.0:
                factor = min((1.0 - a) / a, group["max_extrapolation"])
                y = x + factor * (x - x_prev)
                g_new = torch.func.grad(f_grad)(y)
                loss = float(f_grad(x))
                counts["fn"] += 1
            else:
                g_new, loss_t = torch.func.grad_and_value(f_grad)(x)
                loss = float(loss_t)
            counts["grad"] += 1
        refuse_non_finite(g_new)
        g_prev = st.get("grad_estimate")
        if g_prev is None or a >= 1.0:
            g = g_new
        elif mom == "hessian_corrected" and x_prev is not None:
            # transport the old estimate to x_t with the Hessian estimate (dense: the momentum matrix H_t)
            correction = H @ (x - x_prev).to(H.dtype) if H is not None else hvp_at(f_hess, x, x - x_prev)
            g = (1 - a) * (g_prev + correction.to(g_prev.dtype)) + a * g_new
        else:
            g = (1 - a) * g_prev + a * g_new
        refuse_non_finite(g)
        new_state["grad_estimate"] = g.detach().clone()

        solver = group["solver"]
        if solver == "auto":
            solver = "exact" if hess_mode == "dense" else "lanczos"

        def solve(M_val: float) -> torch.Tensor:
            if solver == "exact":
                return solve_cubic_exact(g, H, M_val)
            if solver == "lanczos":
                return solve_cubic_lanczos(g, hvp, M_val, group["krylov_dim"])[0]
            return solve_cubic_gd(g, hvp, M_val, max_iter=group["gd_iters"])[0]

        M_cur = M_eff
        h = refuse_non_finite(solve(M_cur))
        decrease = -cubic_model_value(g, hvp(h), h, M_cur)
        M_next = group["M"]
        if group["M_rule"] == "adaptive":
            M_max_eff = group["M_max"] * conv  # M_min / M_max bound the user's M (its convention)
            # f(x + h) and f(x) each carry rounding of a few ulps of |f|: once converged the predicted decrease is
            # below that, and without this slack the test failed by rounding alone and M doubled up to M_max
            eps = torch.finfo(x.dtype).eps
            rounding = ACCEPTANCE_ULPS * eps * abs(loss)
            # where f is at its noise floor (a zero minimum: residuals that cancel) the comparison of f values is
            # noise too; a step below the resolution of x itself is then accepted without a test
            x_resolution = ACCEPTANCE_ULPS * eps * float(x.norm())
            for _ in range(60):
                if float(h.norm()) <= x_resolution:
                    break
                counts["fn"] += 1
                if float(f_grad(x + h)) <= loss - decrease + rounding or M_cur >= M_max_eff:
                    break
                M_cur = min(M_cur * 2.0, M_max_eff)
                h = refuse_non_finite(solve(M_cur))
                decrease = -cubic_model_value(g, hvp(h), h, M_cur)
            M_next = max(M_cur / conv / 2.0, group["M_min"])
        delta = group["lr"] * h
        if group["max_step_norm"] is not None:
            n = float(delta.norm())
            if n > group["max_step_norm"]:
                delta = delta * (group["max_step_norm"] / n)
        x_new = refuse_non_finite(x + delta)

        # commit: nothing below raises
        st["step"] = t
        st.update(new_state)
        st["x_prev"] = x.clone()
        self._window = window
        self._window_to_rebuild = []
        group["M"] = M_next
        flat.assign(x_new)
        for key, c in counts.items():
            st[f"{key}_evals"] = int(st.get(f"{key}_evals", 0)) + c
        self.last_stats = CubicStepStats(
            loss=loss,
            model_decrease=decrease,
            step_norm=float(delta.norm()),
            M=M_cur / conv,  # in the user's convention, like param_groups[0]["M"], M_min and M_max
            alpha=a,
            beta=b,
            grad_evals=counts["grad"],
            hess_evals=counts["hess"],
            hvp_evals=counts["hvp"],
            fn_evals=counts["fn"],
        )
        return loss
