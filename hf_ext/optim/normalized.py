"""Warmup-free normalized optimizers: Lion, LionA (l2-controlled), LionAR (angle-controlled) and a rotational wrapper.

Update rules (per parameter tensor; `t` counts optimizer steps from 1):

* Lion: `c = b1*m + (1-b1)*g`, `p -= lr*(sign(c) + wd*p)`, `m = b2*m + (1-b2)*g`.
* LionA: as Lion but the update is rescaled so that `||u||_2 = sqrt(numel)` exactly, whatever the number of zero
  signs: `u = sign(c) * sqrt(n) / ||sign(c)||`.
* LionAR: on *rotational* tensors (weight-decayed, 2+ dims) every neuron keeps a fixed norm and is rotated on its
  sphere by a controlled angle `eta_r * lr_t/lr_0` along the Lion direction (radial and mean components projected
  out); weight decay is replaced by this projection. Other tensors (biases, gains) get plain Lion updates.
* RotationalWrapper: the same angular control around the update direction of AdamW, Lion or SGD with momentum.

Options shared by LionA / LionAR: `nesterov` (the direction uses the already updated momentum), `inverse_bias_correction`
(multiply the step by `1 - b2**t`) and `snr_correction` (scale the step by `1/sqrt(1 + SNR)` with the gradient
signal-to-noise ratio estimated from momentum statistics). See docs/optim.md for the choices made where the paper is
silent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = [
    "Lion",
    "LionA",
    "LionAR",
    "RotationalWrapper",
    "equilibrium_angle",
    "rotational_param_groups",
    "transposed_parameter_ids",
]

_NORM_NAME_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


# ----------------------------------------------------------------------------------------------------------------------
# parameter grouping
# ----------------------------------------------------------------------------------------------------------------------
def transposed_parameter_ids(model: nn.Module) -> set[int]:
    """Ids of weights stored as `(in_features, out_features)` (HF `Conv1D`, used by GPT-2): their neurons are columns.

    Args:
        model (`nn.Module`): the model to scan.

    Returns:
        `set[int]`: `id(parameter)` of every transposed weight.
    """
    from transformers.pytorch_utils import Conv1D

    return {id(m.weight) for m in model.modules() if isinstance(m, Conv1D)}


def rotational_param_groups(
    model: nn.Module,
    weight_decay: float,
    decay_parameter_names: Iterable[str] | None = None,
    rotational_embeddings: bool = False,
) -> list[dict]:
    """Split a model's trainable parameters into rotational and plain groups.

    Rotational = parameters that the HF `Trainer` would weight-decay (not biases, not norm gains) with 2+ dimensions.
    Embedding matrices (and an LM head tied to one) are kept out of the rotational set by default: a fixed norm per
    token row would cap the logit scale (nothing after them is scale-invariant); pass `rotational_embeddings=True` to
    include them (one neuron per token row). HF `Conv1D` weights (shape `(in, out)`) get `neuron_dim=1` so their
    neurons are columns.

    Args:
        model (`nn.Module`): the model.
        weight_decay (`float`): weight decay of the rotational groups (it sets the equilibrium angle); plain groups
            get 0.
        decay_parameter_names (`Iterable[str]`, *optional*): names that receive weight decay; defaults to the
            `Trainer.get_decay_parameter_names` rule.

    Returns:
        `list[dict]`: non-empty optimizer param groups with keys `params`, `weight_decay`, `rotational`, `neuron_dim`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
    if decay_parameter_names is None:
        from transformers.trainer_pt_utils import get_parameter_names

        decay_parameter_names = get_parameter_names(model, [nn.LayerNorm], _NORM_NAME_PATTERNS)
    decay = set(decay_parameter_names)
    transposed = transposed_parameter_ids(model)
    embeddings = (
        set() if rotational_embeddings else {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    )
    rot, rot_t, plain = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in decay and p.dim() >= 2 and id(p) not in embeddings:
            (rot_t if id(p) in transposed else rot).append(p)
        else:
            plain.append(p)
    groups = [
        {"params": rot, "weight_decay": weight_decay, "rotational": True, "neuron_dim": 0},
        {"params": rot_t, "weight_decay": weight_decay, "rotational": True, "neuron_dim": 1},
        {"params": plain, "weight_decay": 0.0, "rotational": False, "neuron_dim": 0},
    ]
    return [g for g in groups if g["params"]]


def _resolve_params(params, weight_decay: float):
    """Accept an `nn.Module` (grouped with `rotational_param_groups`) or the usual params / param groups."""
    if isinstance(params, nn.Module):
        return rotational_param_groups(params, weight_decay)
    return params


def equilibrium_angle(
    kind: str, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.99), momentum: float = 0.9
) -> float:
    """Expected per-step rotation (radians) of a weight vector in rotational equilibrium (Kosson et al., 2024).

    Args:
        kind (`str`): `"adamw"`, `"lion"` or `"sgdm"`.
        lr (`float`): learning rate.
        weight_decay (`float`): decoupled weight decay (AdamW/Lion) or L2 coefficient (SGD).
        betas (`tuple[float, float]`): Adam `(beta1, beta2)` or Lion `(beta1, beta2)`.
        momentum (`float`): SGD momentum.

    Returns:
        `float`: AdamW `sqrt(2*lr*wd*(1-b1)/(1+b1))`, SGDM `sqrt(2*lr*wd/(1+momentum))`,
        Lion `sqrt(pi/2) * sqrt(2*lr*wd) * sqrt((1-b1)^2 + b1^2 (1-b2)/(1+b2))`.
    """
    if lr <= 0 or weight_decay <= 0:
        raise ValueError(
            f"equilibrium_angle needs lr > 0 and weight_decay > 0 (got lr={lr}, weight_decay={weight_decay}); "
            "pass an explicit `angle` instead."
        )
    b1, b2 = betas
    if kind == "adamw":
        return math.sqrt(2 * lr * weight_decay * (1 - b1) / (1 + b1))
    if kind == "sgdm":
        return math.sqrt(2 * lr * weight_decay / (1 + momentum))
    if kind == "lion":
        return (
            math.sqrt(math.pi / 2)
            * math.sqrt(2 * lr * weight_decay)
            * math.sqrt((1 - b1) ** 2 + b1**2 * (1 - b2) / (1 + b2))
        )
    raise ValueError(f"`kind` must be 'adamw', 'lion' or 'sgdm', got {kind!r}.")


def _check_betas(betas) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"`betas` must be a pair (beta1, beta2), got {betas!r}.")
    b1, b2 = float(betas[0]), float(betas[1])
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"`betas` must lie in [0, 1), got {betas!r}.")
    return b1, b2


def _check_common(lr: float, weight_decay: float) -> None:
    if not isinstance(lr, (int, float)) or lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"`lr` must be a positive finite number, got {lr!r}.")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")


# ----------------------------------------------------------------------------------------------------------------------
# Lion direction with the paper's momentum options
# ----------------------------------------------------------------------------------------------------------------------
def _lion_direction(grad: torch.Tensor, state: dict, betas: tuple[float, float], nesterov: bool) -> torch.Tensor:
    """Update `state['exp_avg']` and return the interpolation `c` whose sign is the Lion direction."""
    b1, b2 = betas
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    m = state["exp_avg"]
    if nesterov:
        m.mul_(b2).add_(grad, alpha=1 - b2)
        c = m.mul(b1).add_(grad, alpha=1 - b1)
    else:
        c = m.mul(b1).add_(grad, alpha=1 - b1)
        m.mul_(b2).add_(grad, alpha=1 - b2)
    return c


def _step_scale(state: dict, group: dict, grad: torch.Tensor) -> float:
    """Multiplicative step factor from the inverse bias correction and the SNR correction options."""
    b2 = group["betas"][1]
    t = state["step"]
    scale = 1.0
    if group.get("inverse_bias_correction", False):
        scale *= 1.0 - b2**t
    if group.get("snr_correction", False):
        scale *= _snr_factor(state, group, grad)
    return scale


def _snr_factor(state: dict, group: dict, grad: torch.Tensor) -> float:
    """`1/sqrt(1 + SNR)` with SNR = ||mu||^2 / (sigma^2/B) estimated from the momentum EMA (coefficient b2).

    For an EMA with coefficient b of i.i.d. gradients g = mu + noise, E||m||^2 = ||mu||^2 + c*sigma_B^2 with
    c = (1-b)/(1+b) and E||g||^2 = ||mu||^2 + sigma_B^2. Both expectations are tracked with a bias-corrected EMA of
    coefficient `snr_beta`; the estimates are clamped at zero.
    """
    b2 = group["betas"][1]
    sb = group.get("snr_beta", 0.9)
    t = state["step"]
    m = state["exp_avg"]
    m_hat = m / (1.0 - b2**t)
    g2 = float(grad.float().pow(2).sum())
    m2 = float(m_hat.float().pow(2).sum())
    state["snr_g2"] = sb * state.get("snr_g2", 0.0) + (1 - sb) * g2
    state["snr_m2"] = sb * state.get("snr_m2", 0.0) + (1 - sb) * m2
    corr = 1.0 - sb**t
    eg2, em2 = state["snr_g2"] / corr, state["snr_m2"] / corr
    c = (1 - b2) / (1 + b2)
    signal = max(em2 - c * eg2, 0.0) / (1 - c)
    noise = max(eg2 - em2, 0.0) / (1 - c)
    snr = signal / (noise + 1e-30)
    state["snr"] = snr
    return 1.0 / math.sqrt(1.0 + snr)


# ----------------------------------------------------------------------------------------------------------------------
# rotational geometry
# ----------------------------------------------------------------------------------------------------------------------
def _neuron_view(p: torch.Tensor, neuron_dim: int, per_neuron: bool) -> torch.Tensor:
    """A 2D view of `p` with one neuron per row (shares storage with `p`)."""
    if not per_neuron:
        return p.view(1, -1)
    if neuron_dim == 1:
        if p.dim() != 2:
            raise ValueError(f"neuron_dim=1 is only supported for 2D weights, got shape {tuple(p.shape)}.")
        return p.t()
    return p.view(p.shape[0], -1)


def _init_rotational(p: torch.Tensor, state: dict, neuron_dim: int, per_neuron: bool, zero_mean: bool) -> None:
    w = _neuron_view(p.data, neuron_dim, per_neuron)
    norm = w.norm(dim=1, keepdim=True)
    if zero_mean and w.shape[1] > 1:
        w.sub_(w.mean(dim=1, keepdim=True))
        w.mul_(norm / w.norm(dim=1, keepdim=True).clamp_min(1e-30))
    state["norm"] = norm.clone()


def _rotate(
    p: torch.Tensor,
    u: torch.Tensor,
    state: dict,
    angle: float,
    neuron_dim: int,
    per_neuron: bool,
    zero_mean: bool,
    update_norm_decay: float,
) -> None:
    """Rotate every neuron of `p` against the direction `u` by `angle` (scaled by ||u||/EMA(||u||) if decay > 0)."""
    w = _neuron_view(p.data, neuron_dim, per_neuron)
    norm = state["norm"].to(w.dtype)
    uu = _neuron_view(u, neuron_dim, per_neuron).to(w.dtype).clone()
    if zero_mean and uu.shape[1] > 1:
        uu.sub_(uu.mean(dim=1, keepdim=True))
    uu.sub_(w * ((uu * w).sum(dim=1, keepdim=True) / norm.pow(2).clamp_min(1e-30)))
    unorm = uu.norm(dim=1, keepdim=True)
    if update_norm_decay > 0:
        t = state["step"]
        ema = state.get("update_norm_ema", torch.zeros_like(unorm))
        ema = ema * update_norm_decay + (1 - update_norm_decay) * unorm.pow(2)
        state["update_norm_ema"] = ema
        ref = (ema / (1 - update_norm_decay**t)).sqrt()
        theta = angle * unorm / ref.clamp_min(1e-30)
    else:
        theta = torch.full_like(unorm, angle)
    theta = torch.where(unorm > 0, theta, torch.zeros_like(theta))
    direction = uu / unorm.clamp_min(1e-30)
    # geodesic step: w <- cos(theta) w - sin(theta) * ||w|| * direction  (direction is orthogonal to w)
    new = w * torch.cos(theta) - direction * (torch.sin(theta) * norm)
    new.mul_(norm / new.norm(dim=1, keepdim=True).clamp_min(1e-30))
    w.copy_(new)


# ----------------------------------------------------------------------------------------------------------------------
# optimizers
# ----------------------------------------------------------------------------------------------------------------------
class Lion(Optimizer):
    r"""Lion (Chen et al., 2023): sign of the interpolated momentum with decoupled weight decay.

    Args:
        params (iterable or `nn.Module`): parameters / param groups, or a model (grouped with
            `rotational_param_groups`, weight decay on rotational tensors only).
        lr (`float`, *optional*, defaults to 1e-4): learning rate.
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.99)`): interpolation and momentum coefficients.
        weight_decay (`float`, *optional*, defaults to 0.0): decoupled weight decay (multiplied by `lr`).
        nesterov (`bool`, *optional*, defaults to `False`): use the updated momentum in the direction.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        _check_common(lr, weight_decay)
        betas = _check_betas(betas)
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(_resolve_params(params, weight_decay), defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                c = _lion_direction(p.grad, state, group["betas"], group["nesterov"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(c), alpha=-group["lr"])
        return loss


class LionA(Optimizer):
    r"""LionA: Lion with exact l2 control of the update, `||u||_2 = sqrt(numel)` for every tensor.

    `u = sign(c) * sqrt(n) / ||sign(c)||_2` (zero when every sign is zero), then `p -= lr * (s_t * u + wd * p)` with
    `s_t` the product of the optional inverse bias correction `1 - b2**t` and the optional SNR factor.

    Args:
        params (iterable or `nn.Module`): parameters / param groups, or a model.
        lr (`float`, *optional*, defaults to 1e-4): learning rate.
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.99)`): Lion interpolation and momentum
            coefficients; the warmup-free recipe uses `(0.98, 0.98)` with `nesterov=True`.
        weight_decay (`float`, *optional*, defaults to 0.0): decoupled weight decay.
        nesterov (`bool`, *optional*, defaults to `False`): direction from the updated momentum.
        inverse_bias_correction (`bool`, *optional*, defaults to `False`): multiply the step by `1 - b2**t`.
        snr_correction (`bool`, *optional*, defaults to `False`): multiply the step by `1/sqrt(1 + SNR)`.
        snr_beta (`float`, *optional*, defaults to 0.9): EMA coefficient of the SNR statistics.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        nesterov: bool = False,
        inverse_bias_correction: bool = False,
        snr_correction: bool = False,
        snr_beta: float = 0.9,
    ):
        _check_common(lr, weight_decay)
        betas = _check_betas(betas)
        if not 0.0 <= snr_beta < 1.0:
            raise ValueError(f"`snr_beta` must lie in [0, 1), got {snr_beta}.")
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            nesterov=nesterov,
            inverse_bias_correction=inverse_bias_correction,
            snr_correction=snr_correction,
            snr_beta=snr_beta,
        )
        super().__init__(_resolve_params(params, weight_decay), defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                c = _lion_direction(p.grad, state, group["betas"], group["nesterov"])
                u = torch.sign(c)
                count = float(u.abs().sum())  # ||sign(c)||^2 = number of non-zero signs
                if count == 0:
                    continue
                u.mul_(math.sqrt(p.numel() / count))
                scale = _step_scale(state, group, p.grad)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(u, alpha=-group["lr"] * scale)
        return loss


class LionAR(Optimizer):
    r"""LionAR: Lion with angular update control and per-neuron norm projection (no weight decay on rotational tensors).

    For a rotational tensor (group key `rotational`, default: `weight_decay > 0` and 2+ dims) each neuron (row;
    column for `neuron_dim=1`, i.e. HF `Conv1D`) is, at the first step, optionally centred and its norm recorded.
    Every step then rotates each neuron along the Lion direction `-sign(c)` (with its radial part and, if
    `zero_mean`, its mean removed) by the angle `angle_t = eta_r * (lr_t / lr_0) * s_t` and projects it back to
    its recorded norm. `eta_r` is `angle` if given, else the Lion equilibrium angle for (`lr_0`, `weight_decay`,
    `betas`); `lr_t / lr_0` carries any LR schedule; `s_t` holds the optional inverse bias correction and SNR factor.
    Non-rotational tensors get plain Lion updates with their group's `lr` and `weight_decay`.

    Args:
        params (iterable or `nn.Module`): parameters / param groups (keys `rotational`, `neuron_dim` are honoured), or
            a model, grouped with `rotational_param_groups` (handles transposed `Conv1D` weights).
        lr (`float`, *optional*, defaults to 1e-4): Lion learning rate; also sets the equilibrium angle.
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.99)`): Lion coefficients.
        weight_decay (`float`, *optional*, defaults to 1.0): weight decay defining the equilibrium angle of
            rotational tensors (it is not applied to them); applied to non-rotational groups that set it.
        angle (`float`, *optional*): explicit per-step rotation (radians) at the peak learning rate.
        nesterov (`bool`, *optional*, defaults to `False`): direction from the updated momentum.
        inverse_bias_correction (`bool`, *optional*, defaults to `False`): multiply the angle by `1 - b2**t`.
        snr_correction (`bool`, *optional*, defaults to `False`): multiply the angle by `1/sqrt(1 + SNR)`.
        snr_beta (`float`, *optional*, defaults to 0.9): EMA coefficient of the SNR statistics.
        zero_mean (`bool`, *optional*, defaults to `True`): keep neurons (and their updates) zero-mean.
        per_neuron (`bool`, *optional*, defaults to `True`): one norm per neuron (else one per tensor).
        update_norm_decay (`float`, *optional*, defaults to 0.0): 0 rotates by exactly the target angle each step;
            > 0 normalises by an EMA of the update norm instead (REQ's soft control).
        model (`nn.Module`, *optional*): model whose `Conv1D` weights are transposed (when `params` are not grouped
            with `rotational_param_groups`).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 1.0,
        angle: float | None = None,
        nesterov: bool = False,
        inverse_bias_correction: bool = False,
        snr_correction: bool = False,
        snr_beta: float = 0.9,
        zero_mean: bool = True,
        per_neuron: bool = True,
        update_norm_decay: float = 0.0,
        model: nn.Module | None = None,
    ):
        _check_common(lr, weight_decay)
        betas = _check_betas(betas)
        if angle is not None and not (0 < angle < math.pi / 2):
            raise ValueError(f"`angle` must be in (0, pi/2) radians, got {angle}.")
        if angle is None and weight_decay == 0:
            raise ValueError("LionAR needs `weight_decay > 0` (it sets the equilibrium angle) or an explicit `angle`.")
        if not 0.0 <= update_norm_decay < 1.0:
            raise ValueError(f"`update_norm_decay` must lie in [0, 1), got {update_norm_decay}.")
        if not 0.0 <= snr_beta < 1.0:
            raise ValueError(f"`snr_beta` must lie in [0, 1), got {snr_beta}.")
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            angle=angle,
            nesterov=nesterov,
            inverse_bias_correction=inverse_bias_correction,
            snr_correction=snr_correction,
            snr_beta=snr_beta,
            zero_mean=zero_mean,
            per_neuron=per_neuron,
            update_norm_decay=update_norm_decay,
        )
        self._transposed = transposed_parameter_ids(model) if model is not None else set()
        super().__init__(_resolve_params(params, weight_decay), defaults)
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])

    def _is_rotational(self, p: torch.Tensor, group: dict) -> bool:
        flag = group.get("rotational")
        if flag is None:
            return group["weight_decay"] != 0 and p.dim() > 1
        return bool(flag) and p.dim() > 1

    def _neuron_dim(self, p: torch.Tensor, group: dict) -> int:
        if "neuron_dim" in group:
            return int(group["neuron_dim"])
        return 1 if id(p) in self._transposed else 0

    def group_angle(self, group: dict) -> float:
        """Per-step rotation (radians) at the group's base learning rate, before schedule and corrections."""
        if group.get("angle") is not None:
            return float(group["angle"])
        return equilibrium_angle("lion", group["base_lr"], group["weight_decay"], tuple(group["betas"]))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                c = _lion_direction(p.grad, state, group["betas"], group["nesterov"])
                if not self._is_rotational(p, group):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(torch.sign(c), alpha=-group["lr"])
                    continue
                nd = self._neuron_dim(p, group)
                if "norm" not in state:
                    _init_rotational(p, state, nd, group["per_neuron"], group["zero_mean"])
                scale = _step_scale(state, group, p.grad)
                angle = self.group_angle(group) * (group["lr"] / group["base_lr"]) * scale
                if angle <= 0:
                    continue
                _rotate(
                    p,
                    torch.sign(c),
                    state,
                    angle,
                    nd,
                    group["per_neuron"],
                    group["zero_mean"],
                    group["update_norm_decay"],
                )
        return loss


_INNER = {"adamw": torch.optim.AdamW, "sgdm": torch.optim.SGD, "lion": Lion}


class RotationalWrapper(Optimizer):
    r"""Rotational (angle-controlled) version of AdamW, Lion or SGD with momentum.

    The inner optimizer (a real `torch.optim.AdamW` / `torch.optim.SGD` / `Lion` instance sharing this wrapper's param
    groups) computes its update direction `u` (run with lr 1 and no weight decay on rotational tensors); each neuron of a
    rotational tensor is then rotated against `u` by `eta_r * (lr_t/lr_0)` (scaled by `||u||/EMA(||u||)` when
    `update_norm_decay > 0`, as in the reference rotational wrapper) and projected back to its norm. Non-rotational
    tensors get the inner optimizer's ordinary step.

    Args:
        params (iterable or `nn.Module`): parameters / param groups, or a model (grouped with
            `rotational_param_groups`).
        inner (`str`, *optional*, defaults to `"adamw"`): `"adamw"`, `"lion"` or `"sgdm"`.
        lr (`float`, *optional*, defaults to 1e-3): inner learning rate; also sets the equilibrium angle.
        weight_decay (`float`, *optional*, defaults to 0.01): sets the equilibrium angle of rotational tensors.
        angle (`float`, *optional*): explicit per-step rotation (radians) at the peak learning rate.
        zero_mean (`bool`, *optional*, defaults to `True`): keep neurons and updates zero-mean.
        per_neuron (`bool`, *optional*, defaults to `True`): one norm per neuron (else per tensor).
        update_norm_decay (`float`, *optional*, defaults to 0.9): EMA coefficient of the update-norm normaliser
            (0 = exact per-step angle).
        model (`nn.Module`, *optional*): model whose `Conv1D` weights are transposed.
        **inner_kwargs: passed to the inner optimizer (`betas`, `eps`, `momentum`, `nesterov`, ...).
    """

    def __init__(
        self,
        params,
        inner: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        angle: float | None = None,
        zero_mean: bool = True,
        per_neuron: bool = True,
        update_norm_decay: float = 0.9,
        model: nn.Module | None = None,
        **inner_kwargs,
    ):
        if inner not in _INNER:
            raise ValueError(f"`inner` must be one of {sorted(_INNER)}, got {inner!r}.")
        _check_common(lr, weight_decay)
        if angle is not None and not (0 < angle < math.pi / 2):
            raise ValueError(f"`angle` must be in (0, pi/2) radians, got {angle}.")
        if angle is None and weight_decay == 0:
            raise ValueError("RotationalWrapper needs `weight_decay > 0` or an explicit `angle`.")
        if not 0.0 <= update_norm_decay < 1.0:
            raise ValueError(f"`update_norm_decay` must lie in [0, 1), got {update_norm_decay}.")
        if inner == "sgdm":
            inner_kwargs.setdefault("momentum", 0.9)
            if inner_kwargs["momentum"] <= 0:
                raise ValueError("`momentum` must be > 0 for inner='sgdm' (SGD with momentum).")
        params = _resolve_params(params, weight_decay)
        self.inner_name = inner
        self.inner = _INNER[inner](params, lr=lr, weight_decay=weight_decay, **inner_kwargs)
        self._transposed = transposed_parameter_ids(model) if model is not None else set()
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            angle=angle,
            zero_mean=zero_mean,
            per_neuron=per_neuron,
            update_norm_decay=update_norm_decay,
        )
        super().__init__([dict(g) for g in self.inner.param_groups], defaults)
        for own, shared in zip(self.param_groups, self.inner.param_groups):
            for key, value in own.items():
                shared.setdefault(key, value)
            shared.setdefault("base_lr", shared["lr"])
        self.param_groups = self.inner.param_groups

    def _is_rotational(self, p: torch.Tensor, group: dict) -> bool:
        flag = group.get("rotational")
        if flag is None:
            return group["weight_decay"] != 0 and p.dim() > 1
        return bool(flag) and p.dim() > 1

    def group_angle(self, group: dict) -> float:
        """Per-step rotation (radians) at the group's base learning rate."""
        if group.get("angle") is not None:
            return float(group["angle"])
        return equilibrium_angle(
            self.inner_name,
            group["base_lr"],
            group["weight_decay"],
            tuple(group.get("betas", (0.9, 0.999))),
            group.get("momentum", 0.9),
        )

    def momentum_buffer(self, p: torch.Tensor) -> torch.Tensor | None:
        """The inner optimizer's first-moment buffer of `p` (None before the first step)."""
        st = self.inner.state.get(p, {})
        return st.get("exp_avg", st.get("momentum_buffer"))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        saved, swapped = [], []
        for group in self.param_groups:
            rot = [p for p in group["params"] if p.grad is not None and self._is_rotational(p, group)]
            if not rot:
                continue
            if len(rot) != len(group["params"]):
                raise ValueError(
                    "A param group mixes rotational and non-rotational tensors; split it (see rotational_param_groups)."
                )
            swapped.append((group, group["lr"], group["weight_decay"]))
            for p in rot:
                saved.append((group, p, p.detach().clone()))
                p.zero_()  # the inner step on zeros with lr 1 and no decay returns exactly -u
        for group, _, _ in swapped:
            group["lr"], group["weight_decay"] = 1.0, 0.0
        try:
            self.inner.step()
        finally:
            for group, lr, wd in swapped:
                group["lr"], group["weight_decay"] = lr, wd
        for group, p, before in saved:
            u = -p.detach().clone()
            p.copy_(before)
            state = self.state[p]
            state["step"] = state.get("step", 0) + 1
            nd = int(group["neuron_dim"]) if "neuron_dim" in group else (1 if id(p) in self._transposed else 0)
            if "norm" not in state:
                _init_rotational(p, state, nd, group["per_neuron"], group["zero_mean"])
            angle = self.group_angle(group) * (group["lr"] / group["base_lr"])
            if angle > 0:
                _rotate(p, u, state, angle, nd, group["per_neuron"], group["zero_mean"], group["update_norm_decay"])
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["inner"] = self.inner.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        inner_sd = state_dict.pop("inner", None)
        if inner_sd is None:
            raise ValueError("RotationalWrapper.load_state_dict needs the 'inner' entry written by its state_dict().")
        self.inner.load_state_dict(inner_sd)
        super().load_state_dict(state_dict)
        self.inner.param_groups = self.param_groups
