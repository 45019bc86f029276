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
import re
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from ..utils.checks import is_bool, is_int, is_real, python_scalar
from ..utils.distributed import is_dtensor as _is_dtensor

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
    """Ids of weights whose output neurons lie along dim 1: HF `Conv1D` (used by GPT-2), stored as
    `(in_features, out_features)`, whose neurons are columns, and the transposed convolutions
    (`nn.ConvTranspose1d/2d/3d`), stored as `(in_channels / groups, out_channels / groups, *kernel)`, whose output
    channel `j` is `weight[:, j]`
    (with `groups > 1`, `weight[:, j]` holds output channel `j` of every group: they share one norm).

    Args:
        model (`nn.Module`): the model to scan.

    Returns:
        `set[int]`: `id(parameter)` of every transposed weight.
    """
    from transformers.pytorch_utils import Conv1D

    transposed = (Conv1D, nn.modules.conv._ConvTransposeNd)
    return {id(m.weight) for m in model.modules() if isinstance(m, transposed) and isinstance(m.weight, torch.Tensor)}


# peft's LoRA B factors (and their embedding variants) start at zero by design: a rotation keeps each neuron's norm, so
# they would never move. They are plain by name, which stays the same once they are trained (so a resumed run groups
# its parameters as the run that wrote the checkpoint did).
_ZERO_INIT_NAME = re.compile(r"(^|\.)lora_(embedding_)?B(\.|$)")
# peft's trainable tokens (`LoraConfig(trainable_token_indices=...)`, `TrainableTokensConfig`) hold rows of an embedding
# (and of a tied LM head) in their own 2-dim tensor, which is not an `nn.Embedding` weight: embedding rows by name.
_EMBEDDING_ROWS_NAME = re.compile(r"(^|\.)trainable_tokens_delta(\.|$)")


def rotational_param_groups(
    model: nn.Module,
    weight_decay: float,
    decay_parameter_names: Iterable[str] | None = None,
    rotational_embeddings: bool = False,
) -> list[dict]:
    """Split a model's trainable parameters into rotational and plain groups.

    Rotational = parameters that the HF `Trainer` would weight-decay (not biases, not norm gains) with 2+ dimensions,
    except peft's LoRA B factors (`lora_B`, `lora_embedding_B`): they start at zero, and a rotation keeps each neuron's
    norm, so they would never move; they train with the base update in the plain group.
    Embedding matrices and the LM head (a transformers model's `get_output_embeddings()`, tied to the input embeddings
    or not), and peft's trainable token rows (`trainable_tokens_delta`, from `trainable_token_indices`), are kept out
    of the rotational set by default: a fixed norm per token row would cap the logit scale (nothing after them is
    scale-invariant); pass `rotational_embeddings=True` to include them (one neuron per token row). HF `Conv1D`
    weights (shape `(in, out)`) get `neuron_dim=1` so their neurons are columns, and so do transposed convolutions
    (`nn.ConvTranspose*d`, shape `(in, out, *kernel)`: one neuron per output channel, `weight[:, j]`).

    Args:
        model (`nn.Module`): the model.
        weight_decay (`float`): weight decay of the rotational groups (it sets the equilibrium angle); plain groups
            get 0.
        decay_parameter_names (`Iterable[str]`, *optional*): names that receive weight decay (an iterable of
            `str`, not one string); defaults to the `Trainer.get_decay_parameter_names` rule.
        rotational_embeddings (`bool`, *optional*, defaults to `False`): make embedding matrices (and the LM head)
            rotational too.

    Returns:
        `list[dict]`: non-empty optimizer param groups with keys `params`, `weight_decay`, `rotational`, `neuron_dim`.
    """
    return _param_groups(model, weight_decay, decay_parameter_names, rotational_embeddings)


def _param_groups(
    model: nn.Module,
    weight_decay: float,
    decay_parameter_names: Iterable[str] | None = None,
    rotational_embeddings: bool = False,
    include_frozen: bool = False,
) -> list[dict]:
    """`rotational_param_groups`; with `include_frozen`, tensors with `requires_grad=False` are placed too, where they
    would go if they were trainable."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    weight_decay = _python_number(weight_decay)  # a numpy number as the Python one the groups hold
    _check_weight_decay(weight_decay)
    if not is_bool(rotational_embeddings):
        raise ValueError(
            f"`rotational_embeddings` must be True or False, got {rotational_embeddings!r} (a string such as 'false' "
            "would count as True and make the embeddings rotational)."
        )
    if decay_parameter_names is None:
        from transformers.trainer_pt_utils import get_parameter_names

        decay_parameter_names = get_parameter_names(model, [nn.LayerNorm], _NORM_NAME_PATTERNS)
    elif isinstance(decay_parameter_names, (str, bytes)) or not isinstance(decay_parameter_names, Iterable):
        raise ValueError(
            "`decay_parameter_names` must be an iterable of parameter names (e.g. a list of str), got "
            f"{decay_parameter_names!r}: a single string would be read character by character, so no tensor would "
            "be rotational; pass [name] for one name."
        )
    decay = set(decay_parameter_names)
    bad = sorted(repr(n) for n in decay if not isinstance(n, str))
    if bad:
        raise ValueError(
            f"`decay_parameter_names` must hold parameter names (str), got {', '.join(bad)}; pass the names of "
            "`model.named_parameters()`."
        )
    transposed = transposed_parameter_ids(model)
    embeddings = (
        set()
        if rotational_embeddings
        else {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} | _output_embedding_ids(model)
    )
    rot, rot_t, plain = [], [], []
    for name, p in model.named_parameters():
        if not (p.requires_grad or include_frozen):
            continue
        embedding_rows = not rotational_embeddings and _EMBEDDING_ROWS_NAME.search(name)
        if (
            name in decay
            and p.dim() >= 2
            and id(p) not in embeddings
            and not embedding_rows
            and not _ZERO_INIT_NAME.search(name)
        ):
            (rot_t if id(p) in transposed else rot).append(p)
        else:
            plain.append(p)
    groups = [
        {"params": rot, "weight_decay": weight_decay, "rotational": True, "neuron_dim": 0},
        {"params": rot_t, "weight_decay": weight_decay, "rotational": True, "neuron_dim": 1},
        {"params": plain, "weight_decay": 0.0, "rotational": False, "neuron_dim": 0},
    ]
    return [g for g in groups if g["params"]]


def _output_embedding_ids(model: nn.Module) -> set[int]:
    """`id` of the weight of a transformers model's LM head (`get_output_embeddings()`), tied to the input embeddings
    or not; empty for models without one."""
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get):
        return set()
    try:
        head = get()
    except (NotImplementedError, AttributeError):
        return set()
    weight = getattr(head, "weight", None)
    return {id(weight)} if isinstance(weight, torch.Tensor) else set()


def _model_layout(model: nn.Module) -> dict[int, tuple[bool, int]]:
    """`id(param) -> (rotational, neuron_dim)` for every parameter of `model` (`rotational_param_groups`); a frozen
    one (`requires_grad=False`) gets the layout it would have if it were trainable."""
    return {
        id(p): (g["rotational"], g["neuron_dim"])
        for g in _param_groups(model, 1.0, include_frozen=True)
        for p in g["params"]
    }



def _model_order(params, model) -> dict[int, int] | None:
    """`id(param) -> index` in the model's parameter order, where the optimizer was given the model (as `params` or
    `model=`), for `_legacy_transposed_groups`; `None` otherwise."""
    module = params if isinstance(params, nn.Module) else model
    if not isinstance(module, nn.Module):
        return None
    return {id(p): i for i, p in enumerate(module.parameters())}


def _group_options(group: dict) -> dict:
    return {k: v for k, v in group.items() if k not in ("params", "neuron_dim", "param_names")}


def _legacy_transposed_groups(groups: list[dict], saved_groups: list[dict], order: dict[int, int] | None):
    """The param groups an optimizer state saved before transposed convolutions rotated per output channel was written
    with, or `None` where `saved_groups` is not such a state.

    Their `(in, out, *kernel)` weights sat with `neuron_dim=0` in the rotational group of the other weights; now they
    are in the `neuron_dim=1` group, so the saved state had one group fewer (or other group sizes) and torch refused
    it ("loaded state dict has a different number of parameter groups"). Each 3+-dim tensor of a rotational
    `neuron_dim=1` group goes back into the rotational `neuron_dim=0` group with the same options, in the model's
    parameter order (`order`, known when the optimizer was given the model)."""
    if order is None:
        return None
    moved = {
        id(p): p
        for g in groups
        if g.get("rotational") and g.get("neuron_dim") == 1
        for p in g["params"]
        if p.dim() > 2
    }
    if not moved or any(key not in order for key in moved):
        return None
    legacy = [dict(g, params=list(g["params"])) for g in groups]
    for group in [g for g in legacy if g.get("rotational") and g.get("neuron_dim") == 1]:
        ps = [p for p in group["params"] if id(p) in moved]
        if not ps:
            continue
        siblings = []
        for other in legacy:
            if other.get("rotational") and other.get("neuron_dim") == 0:
                try:
                    same = bool(_group_options(other) == _group_options(group))
                except (RuntimeError, TypeError, ValueError):  # e.g. a tensor lr compared with another
                    same = False
                if same:
                    siblings.append(other)
        if len(siblings) != 1:
            return None
        group["params"] = [p for p in group["params"] if id(p) not in moved]
        siblings[0]["params"] = sorted(siblings[0]["params"] + ps, key=lambda p: order.get(id(p), -1))
    legacy = [g for g in legacy if g["params"]]
    if len(legacy) != len(saved_groups) or any(
        len(g["params"]) != len(s["params"]) for g, s in zip(legacy, saved_groups, strict=True)
    ):
        return None
    for g, s in zip(legacy, saved_groups, strict=True):
        if any(id(p) in moved for p in g["params"]) and s.get("neuron_dim") != 0:
            return None
    return legacy


def _load_legacy_layout(optimizer: Optimizer, state_dict: dict, owner: str) -> None:
    """Before `Optimizer.load_state_dict`: where `state_dict` was saved with the earlier layout of transposed
    convolutions (`_legacy_transposed_groups`), regroup `optimizer`'s tensors as it was, so the run resumes exactly
    as it was going (torch restores the saved groups' options, `neuron_dim=0` for those weights), with a warning."""
    saved = state_dict.get("param_groups")
    groups = optimizer.param_groups
    if not isinstance(saved, list) or (
        len(saved) == len(groups)
        and all(len(g["params"]) == len(s.get("params", ())) for g, s in zip(groups, saved, strict=True))
    ):
        return
    legacy = _legacy_transposed_groups(groups, saved, getattr(optimizer, "_model_param_order", None))
    if legacy is None:
        return
    warnings.warn(
        f"{owner}: this optimizer state was saved before transposed convolutions (nn.ConvTranspose*d) rotated per "
        "output channel; the resumed run keeps the layout it was trained with (their neurons are the rows of their "
        "(in, out, *kernel) weights, neuron_dim=0). Start a new run for the per-output-channel layout.",
        UserWarning,
        stacklevel=3,
    )
    optimizer.param_groups = legacy


def legacy_layout_pre_hook(optimizer: Optimizer, state_dict: dict) -> None:
    """`Optimizer.register_load_state_dict_pre_hook` form of `_load_legacy_layout`, for optimizers whose groups come from
    `rotational_param_groups(model, ...)` (Lion, LionA, the warmup recipe's AdamW baseline): set
    `optimizer._model_param_order = _model_order(model, None)` first. It also refuses a state whose tensors do not
    fit the optimizer's parameters ([`_refuse_mismatched_state`])."""
    _load_legacy_layout(optimizer, state_dict, type(optimizer).__name__)
    _refuse_mismatched_state(optimizer, state_dict, type(optimizer).__name__)


# per-parameter state entries shaped like the parameter (Lion / LionA / LionAR / RotationalWrapper / AdamW / SGD)
_PARAM_SHAPED_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")
# per-neuron state entries of the rotational tensors (one value per neuron, or one per tensor with per_neuron=False)
_NEURON_STATE = ("norm", "update_norm_ema")


def _refuse_mismatched_state(optimizer: Optimizer, state_dict: dict, owner: str) -> None:
    """Before `Optimizer.load_state_dict`: raise a `ValueError` when a saved state tensor does not fit the parameter it
    is about to be given (torch pairs the saved and the current parameters by position and checks no shape): a
    state saved for another model (another width, another parameter order) loaded silently and failed with a raw
    shape error at the next `step()`. Moments must have the parameter's shape, the per-neuron norms one entry per
    neuron of the saved group's layout. Group counts and sizes that differ are left to torch's own error."""
    saved_groups = state_dict.get("param_groups")
    saved_state = state_dict.get("state")
    groups = optimizer.param_groups
    if not isinstance(saved_groups, list) or not isinstance(saved_state, dict) or len(saved_groups) != len(groups):
        return
    for i, (group, saved) in enumerate(zip(groups, saved_groups)):
        ids = saved.get("params", ()) if isinstance(saved, dict) else ()
        if len(ids) != len(group["params"]):
            return
        for j, (pid, p) in enumerate(zip(ids, group["params"])):
            st = saved_state.get(pid)
            if not isinstance(st, dict):
                continue
            where = f"{owner}.load_state_dict: the state of parameter {j} of param group {i}"
            for key in _PARAM_SHAPED_STATE:
                value = st.get(key)
                if isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(p.shape):
                    raise ValueError(
                        f"{where} has `{key}` of shape {tuple(value.shape)}, but that parameter has shape "
                        f"{tuple(p.shape)}: the state was saved for another model or another parameter order. Build "
                        "the optimizer over the parameters it was saved with, in the same order (the same model and "
                        "grouping), or start without this state."
                    )
            if not (p.dim() > 1 and any(isinstance(st.get(k), torch.Tensor) for k in _NEURON_STATE)):
                continue
            per_neuron = saved.get("per_neuron", group.get("per_neuron", True))
            nd = saved.get("neuron_dim", group.get("neuron_dim", 0))
            neurons = 1 if not per_neuron else p.shape[1 if nd == 1 else 0]
            for key in _NEURON_STATE:
                value = st.get(key)
                if isinstance(value, torch.Tensor) and value.numel() != neurons:
                    raise ValueError(
                        f"{where} has `{key}` with {value.numel()} entries, but that parameter (shape "
                        f"{tuple(p.shape)}) has {neurons} neuron(s) in the saved layout: the state was saved for "
                        "another model or another parameter order. Build the optimizer over the parameters it was "
                        "saved with, in the same order (the same model and grouping), or start without this state."
                    )


def _layout_error(owner: str) -> ValueError:
    return ValueError(
        f"{owner} got param groups without layout information: it cannot tell which 2+-dim weights are rotational, "
        "whether their neurons are rows (nn.Linear) or columns (transformers' Conv1D, e.g. GPT-2), or whether an "
        "embedding tied to the LM head is among them. Pass the model instead: "
        f"`{owner}(model, ...)`, `{owner}(params, model=model, ...)` or, with transformers' Trainer, "
        f"`optimizer_cls_and_kwargs=({owner}, {{'model': model, 'lr': ..., 'weight_decay': ...}})` (or "
        "`hf_ext.optim.normalized_optimizer(...)`); or build the groups with `rotational_param_groups(model, "
        "weight_decay)`; or state the layout with `neuron_dim=0` (rows are neurons) / `neuron_dim=1` (columns)."
    )


def _resolve_params(
    params,
    weight_decay: float,
    model: nn.Module | None = None,
    neuron_dim: int | None = None,
    owner: str = "optimizer",
    needs_layout: bool = False,
):
    """Normalise `params` into param groups; for rotational optimizers (`needs_layout`) every group that may hold
    rotational tensors also gets `rotational` / `neuron_dim` decided per tensor.

    - an `nn.Module`: `rotational_param_groups(params, weight_decay)`;
    - any params with `model=`: each tensor's status and neuron layout come from the model (split into sub-groups);
      a group whose explicit `weight_decay` disagrees with `weight_decay` for rotational tensors is refused (the
      weight decay sets their rotation angle), unless the group gives its own `angle`; a frozen tensor of the model
      (`requires_grad=False`) is kept, with the layout it would have if trainable, and skipped by `step()` like any
      tensor without a gradient; a tensor that is not in `model.parameters()` at all is refused;
    - a flat iterable of tensors (e.g. `model.parameters()`): one group, the reference convention (a tensor is
      rotational when the weight decay is non-zero and it has 2+ dims; rows are neurons, or `neuron_dim`);
    - dict param groups without `rotational`/`neuron_dim` keys holding 2+-dim tensors (e.g. the decay / no-decay
      groups transformers' Trainer builds for `optimizer_cls_and_kwargs`): refused unless `neuron_dim` is given.
    """
    if neuron_dim is not None:
        check_neuron_dim(neuron_dim, or_none=True)
    for module in (params, model):
        if isinstance(module, nn.Module):
            named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
            _refuse_complex([p for _, p in named], owner, [n for n, _ in named])
    if isinstance(params, nn.Module):
        if model is not None and model is not params:
            raise ValueError("Pass the model either as `params` or as `model=`, not two different modules.")
        return rotational_param_groups(params, weight_decay)
    if isinstance(params, torch.Tensor):
        raise TypeError("`params` must be an iterable of tensors or param groups (or a model), not a single tensor.")
    groups = list(params)
    if not groups:
        raise ValueError(f"{owner} got an empty parameter list.")
    flat = not isinstance(groups[0], dict)
    if flat:
        groups = [{"params": groups}]
    groups = [
        {**g, "params": [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])} for g in groups
    ]
    if not needs_layout:
        return groups
    for g in groups:  # before `rotational` / `neuron_dim` are read below
        _check_layout(g, f" of a {owner} param group")
    if model is not None:
        layout = _model_layout(model)
        out = []
        for g in groups:
            buckets: dict[tuple[bool, int], list] = {}
            for p in g["params"]:
                if id(p) not in layout:
                    raise ValueError(
                        f"{owner}: a tensor of shape {tuple(p.shape)} in `params` is not in `model.parameters()` (it "
                        "belongs to another module, or is a copy); pass the model these parameters belong to as "
                        "`model=`, or leave `model=` out and give the layout with `neuron_dim=` / "
                        "`rotational_param_groups`."
                    )
                rot, nd = layout[id(p)]
                if "rotational" in g:
                    rot = bool(g["rotational"]) and p.dim() > 1
                buckets.setdefault((rot, nd), []).append(p)
            for (rot, nd), ps in buckets.items():
                sub = {**g, "params": ps, "rotational": rot, "neuron_dim": nd}
                if rot and g.get("angle") is None:
                    if "weight_decay" in g and g["weight_decay"] != weight_decay:
                        raise ValueError(
                            f"{owner}: a param group sets weight_decay={g['weight_decay']} for rotational tensors "
                            f"but {owner} got weight_decay={weight_decay}; the weight decay sets their rotation "
                            "angle, so make the two agree (or give the group its own `angle`)."
                        )
                    sub["weight_decay"] = weight_decay
                elif not rot and "weight_decay" not in g:
                    sub["weight_decay"] = 0.0
                out.append(sub)
        return out
    for g in groups:
        if "neuron_dim" in g or ("rotational" in g and not g["rotational"]):
            continue
        if any(p.dim() >= 2 for p in g["params"]):
            if neuron_dim is None and not flat:
                raise _layout_error(owner)
            if not flat and "weight_decay" in g and "rotational" not in g and g["weight_decay"] != weight_decay:
                raise ValueError(
                    f"{owner}: a param group holding 2+-dim tensors sets weight_decay={g['weight_decay']} but {owner} "
                    f"got weight_decay={weight_decay}; the weight decay decides which tensors are rotational and their "
                    "angle. Make them agree, or pass the model (see `rotational_param_groups`)."
                )
            g["neuron_dim"] = 0 if neuron_dim is None else neuron_dim
    return groups


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
    # numpy numbers as Python ones: `2 * np.float32(lr) * wd` would be computed in float32
    lr, weight_decay, momentum = _python_number(lr), _python_number(weight_decay), _python_number(momentum)
    if not (_positive_finite(lr) and _positive_finite(weight_decay)):
        raise ValueError(
            f"equilibrium_angle needs finite lr > 0 and weight_decay > 0 (got lr={lr!r}, weight_decay="
            f"{weight_decay!r}); pass an explicit `angle` instead."
        )
    b1, b2 = _check_betas(betas, " of equilibrium_angle")
    if kind == "sgdm":
        _check_unit_interval("momentum", momentum, " of equilibrium_angle")
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


def _check_betas(betas, where: str = "") -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"`betas`{where} must be a pair (beta1, beta2), got {betas!r}.")
    # float(False) is 0.0: a switch given in the wrong place (numpy's bool, a 0-d bool array or tensor too)
    if any(is_bool(b) or getattr(b, "dtype", None) in (torch.bool, bool) for b in betas):
        raise ValueError(f"`betas`{where} must be a pair of numbers (beta1, beta2), not booleans; got {betas!r}.")
    try:
        b1, b2 = float(betas[0]), float(betas[1])
    except (TypeError, ValueError):
        raise ValueError(f"`betas`{where} must be a pair of numbers (beta1, beta2), got {betas!r}.") from None
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"`betas`{where} must lie in [0, 1), got {betas!r}.")
    return b1, b2


def _is_number(value) -> bool:
    """A real number (Python's or numpy's int / float, e.g. `np.float32`), not a `bool` (`True` would act as 1)."""
    return is_real(value)


def _python_number(value):
    """A number `_is_number` accepts as the Python int / float it holds (`np.float32(0.5)` -> `0.5`), so that the
    defaults and param groups (saved as JSON with the trainers' checkpoints) hold Python values and the arithmetic of
    the step is Python's; anything else unchanged, for the checks to refuse by name."""
    return python_scalar(value) if is_real(value) else value


# the numeric hyperparameters a param group may hold (the Lion family's and the inner optimizers')
_NUMBERS = ("lr", "base_lr", "weight_decay", "angle", "snr_beta", "update_norm_decay", "eps", "dampening", "momentum")


def _positive_finite(value) -> bool:
    return _is_number(value) and 0 < value < math.inf


def _check_weight_decay(weight_decay: float, where: str = "") -> None:
    if not _is_number(weight_decay) or not 0 <= weight_decay < math.inf:
        raise ValueError(f"`weight_decay`{where} must be a finite number >= 0, got {weight_decay!r}.")


def _check_common(lr: float, weight_decay: float, where: str = "") -> None:
    if not _positive_finite(lr):
        raise ValueError(f"`lr`{where} must be a positive finite number, got {lr!r}.")
    _check_weight_decay(weight_decay, where)


def _check_angle(angle, where: str = "") -> None:
    if angle is not None and not (_is_number(angle) and 0 < angle < math.pi / 2):
        raise ValueError(f"`angle`{where} must be in (0, pi/2) radians, got {angle!r}.")


def _step_angle(opt, group: dict, owner: str) -> float:
    """The rotation angle of a step of the rotational tensors of `group`, `group_angle * lr / base_lr` (before the
    step-scale corrections, which only shrink it), checked before anything changes: the constructor checks `angle`
    and `lr`, but a scheduler, an assignment to `param_groups[i]` or `load_state_dict` can change them later. A NaN
    `lr` or `angle` turned the weights NaN, an `angle` or an `lr / base_lr` beyond pi/2 turned the neurons past the
    perpendicular (pi: flipped), a negative one skipped the rotation silently and `base_lr` 0 raised a bare
    `ZeroDivisionError`. An `lr` of 0 (the end of a decay) gives angle 0: no rotation."""
    where = f" of a {owner} param group"
    lr, base = group["lr"], group.get("base_lr")
    _check_step_lr(group, owner)
    if not (_is_number(base) and 0 < base < math.inf):
        raise ValueError(
            f"`base_lr`{where} is {base!r}; it must be a finite number > 0 (the learning rate the schedule factor "
            "`lr / base_lr` is taken against, set when the group is added)."
        )
    _check_angle(group.get("angle"), where)
    peak = opt.group_angle(group)
    angle = peak * (lr / base)
    if not angle <= math.pi / 2:
        raise ValueError(
            f"The rotation angle{where} at this step is {angle:.4g} rad (angle {peak:.4g} x lr {lr:.4g} / base_lr "
            f"{base:.4g}), more than pi/2: the neurons would turn past the perpendicular. Keep `lr` at most "
            f"{base * (math.pi / 2) / peak:.4g} (a schedule factor lr/base_lr <= {(math.pi / 2) / peak:.4g}) or lower "
            "the `angle`."
        )
    return angle


def _check_step_lr(group: dict, owner: str) -> None:
    """A group without rotational tensors: its `lr` (set later by a scheduler or by hand) finite and >= 0."""
    lr = group["lr"]
    if not (_is_number(lr) and 0 <= lr < math.inf):
        raise ValueError(
            f"`lr` of a {owner} param group is {lr!r} at this step; it must be a finite number >= 0 (a learning-rate "
            "scheduler or an assignment to `param_groups` / `load_state_dict` set it)."
        )


def _check_unit_interval(name: str, value, where: str = "") -> None:
    """`value` a number in [0, 1) (a decay or EMA coefficient)."""
    if not (_is_number(value) and 0.0 <= value < 1.0):
        raise ValueError(f"`{name}`{where} must be a number in [0, 1), got {value!r}.")


_SWITCHES = ("nesterov", "inverse_bias_correction", "snr_correction", "zero_mean", "per_neuron")


def check_neuron_dim(neuron_dim, where: str = "", or_none: bool = False) -> None:
    """Refuse a `neuron_dim` other than the int 0 (rows are neurons) or 1 (columns): the optimizers and
    `angular_update` test `neuron_dim == 1`, so 2, -1, `"1"`, `True` or 1.5 would be a silently chosen layout.
    `where` follows the argument's name in the message; `or_none` names None as allowed too (the caller handles it).
    """
    if not (is_int(neuron_dim) and neuron_dim in (0, 1)):
        none = " or None" if or_none else ""
        raise ValueError(
            f"`neuron_dim`{where} must be 0 (rows are neurons, nn.Linear) or 1 (dim 1 is the neuron axis: transformers' "
            f"Conv1D, nn.ConvTranspose*d)"
            f"{none}, got {neuron_dim!r}."
        )


def _check_layout(group: dict, where: str) -> None:
    """A group's `rotational` flag must be a bool (or None: decided by the weight decay) and its `neuron_dim` 0 or 1:
    the step reads them with `bool()` / `int()`, so `"false"` would mean rotational and 2, -1, `"1"` or `True` a
    silently chosen layout."""
    flag = group.get("rotational")
    if flag is not None and not is_bool(flag):
        raise ValueError(
            f"`rotational`{where} must be True or False, got {flag!r} (a string such as 'false' would count as True)."
        )
    if "neuron_dim" in group:
        check_neuron_dim(group["neuron_dim"], where)


def _check_group(group: dict, owner: str, rotational: bool = False) -> None:
    """Validate a param group (defaults merged in) like the constructor arguments, before it is added.

    Every hyperparameter the group holds is checked (`lr`, `weight_decay`, `betas`, the on/off switches, `snr_beta`,
    and the inner optimizer's `eps` and `dampening`), so that a bad value fails here and not inside `step()` after
    part of the step was applied (or as NaN weights). `rotational` optimizers also check `angle`,
    `update_norm_decay`, the layout keys `rotational` / `neuron_dim`, and need an `angle` or a positive weight decay
    for the rotational tensors of the group.
    """
    where = f" of a {owner} param group"
    _check_common(group["lr"], group["weight_decay"], where)
    for key in _SWITCHES:  # read by truthiness in the step: a string "false" would switch them on
        if key in group and not is_bool(group[key]):
            raise ValueError(f"`{key}`{where} must be True or False, got {group[key]!r}.")
    if "betas" in group:
        _check_betas(group["betas"], where)
    if "snr_beta" in group:
        _check_unit_interval("snr_beta", group["snr_beta"], where)
    if "eps" in group and not (_is_number(group["eps"]) and 0.0 <= group["eps"] < math.inf):
        raise ValueError(f"`eps`{where} must be a finite number >= 0, got {group['eps']!r}.")
    if "dampening" in group and not (_is_number(group["dampening"]) and 0.0 <= group["dampening"] <= 1.0):
        raise ValueError(f"`dampening`{where} must be a number in [0, 1], got {group['dampening']!r}.")
    if not rotational:
        return
    _check_layout(group, where)
    _check_angle(group.get("angle"), where)
    _check_unit_interval("update_norm_decay", group.get("update_norm_decay", 0.0), where)
    rot = [p for p in group["params"] if _is_rotational(p, group)]
    if group.get("angle") is None and group["weight_decay"] == 0 and rot:
        raise ValueError(
            f"A {owner} param group with rotational tensors needs `weight_decay > 0` (it sets the equilibrium "
            "angle) or an explicit `angle`."
        )


def _parse_group_values(group: dict, where: str = "") -> None:
    """Store a group's `betas` as the pair of floats `_check_betas` reads (a config may give strings or a list), its
    numbers (`_NUMBERS`; numpy's `np.float32` / `np.int64` too) as Python int / float, and its checked switches
    (`is_bool`: numpy's `np.True_` too) as Python bools, as the saved param groups hold them."""
    if "betas" in group:
        group["betas"] = _check_betas(group["betas"], where)
    for key in _NUMBERS:
        if key in group:
            group[key] = _python_number(group[key])
    for key in (*_SWITCHES, "rotational"):
        if is_bool(group.get(key)):
            group[key] = bool(group[key])


def _resolve_added_group(param_group: dict, weight_decay: float, neuron_dim: int | None, owner: str) -> dict:
    """The layout of a group given to `add_param_group` after construction, decided as for dict groups there."""
    if not isinstance(param_group, dict):
        raise TypeError(f"{owner}.add_param_group expects a dict, got {type(param_group).__name__}.")
    (group,) = _resolve_params([param_group], weight_decay, None, neuron_dim, owner)
    if neuron_dim is None and "neuron_dim" not in group and group.get("rotational", True):
        if any(p.dim() >= 2 for p in group["params"]):
            raise ValueError(
                f"{owner}.add_param_group got 2+-dim tensors without layout information: add `neuron_dim=0` (rows "
                "are neurons, nn.Linear) or `neuron_dim=1` (columns, transformers' Conv1D) to the group, or "
                "`rotational=False` for plain updates; `rotational_param_groups(module, weight_decay)` builds such "
                "groups."
            )
    (group,) = _resolve_params([group], weight_decay, None, neuron_dim, owner, needs_layout=True)
    return group


def _list_params(param_group: dict) -> None:
    """Turn a group's `params` given as a generator into a list (as torch's `add_param_group` does), so that it can
    be checked before torch reads it."""
    params = param_group.get("params")
    if params is not None and not isinstance(params, (torch.Tensor, set, list, tuple)):
        param_group["params"] = list(params)


def _refuse_complex(params, owner: str, names: list[str] | None = None) -> None:
    """Raise a `ValueError` naming the first complex tensor of `params` (a tensor or a list/tuple of them; anything
    else is left to torch's checks): the sign and norm updates of these optimizers are defined for real tensors
    only, and a complex one used to fail inside `step()` after the tensors before it were updated."""
    if isinstance(params, torch.Tensor):
        params = [params]
    if not isinstance(params, (list, tuple)):
        return
    for i, p in enumerate(params):
        if isinstance(p, torch.Tensor) and p.is_complex():
            what = f"parameter {names[i]!r}" if names else f"tensor {i} of a param group"
            raise ValueError(
                f"{owner} does not support complex parameters: {what} (shape {tuple(p.shape)}, dtype {p.dtype}) is "
                "complex. Optimize it with a torch optimizer that supports complex tensors (e.g. torch.optim.AdamW), "
                "or store it as a real tensor (`torch.view_as_real`) and give this optimizer that."
            )


def _refuse_sparse_gradients(param_groups: list[dict], owner: str) -> None:
    """Raise before any parameter or state is touched when a gradient is sparse (as torch's Adam does)."""
    for group in param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(
                    f"{owner} does not support sparse gradients (got one for a tensor of shape {tuple(p.shape)}); "
                    "use `nn.Embedding(..., sparse=False)` or torch.optim.SparseAdam for those parameters."
                )


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
    """`1/sqrt(1 + SNR)` with SNR = ||mu||^2 / sigma^2 estimated from the momentum EMA (coefficient b2), exact at every t.

    With m_0 = 0 and i.i.d. gradients g = mu + noise (E||noise||^2 = sigma^2), the bias-corrected momentum
    m_hat_t = m_t / (1 - b^t) has E||m_hat_t||^2 = ||mu||^2 + c_t sigma^2 with the finite-t constant
    c_t = (1-b)/(1+b) * (1 - b^(2t)) / (1 - b^t)^2 (c_1 = 1, c_t -> (1-b)/(1+b)), and E||g||^2 = ||mu||^2 + sigma^2.
    `||g||^2`, `||m_hat||^2` and `c_t` are averaged with the same bias-corrected EMA (coefficient `snr_beta`), so
    the averaged c matches the averaged `||m_hat||^2`; then ||mu||^2 = (E||m_hat||^2 - c E||g||^2)/(1 - c) and
    sigma^2 = (E||g||^2 - E||m_hat||^2)/(1 - c), both clamped at zero. While c is within 1e-6 of 1 (the first step:
    one gradient says nothing about the noise) there is no estimate and the factor is 1.
    """
    b2 = group["betas"][1]
    sb = group.get("snr_beta", 0.9)
    t = state["step"]
    bc = 1.0 - b2**t
    # squares in float32 for half-precision tensors, in the tensor's own dtype otherwise (`.float()` summed float64
    # tensors in float32: their SNR was ~1e-6 relative off a float64 computation)
    g2 = _total(grad.to(_acc_dtype(grad.dtype)).pow(2))
    m2 = _total(state["exp_avg"].to(_acc_dtype(state["exp_avg"].dtype)).pow(2)) / bc**2
    c_t = (1 - b2) / (1 + b2) * (1 - b2 ** (2 * t)) / bc**2 if b2 > 0 else 1.0
    state["snr_g2"] = sb * state.get("snr_g2", 0.0) + (1 - sb) * g2
    state["snr_m2"] = sb * state.get("snr_m2", 0.0) + (1 - sb) * m2
    state["snr_c"] = sb * state.get("snr_c", 0.0) + (1 - sb) * c_t
    corr = 1.0 - sb**t
    eg2, em2, ec = state["snr_g2"] / corr, state["snr_m2"] / corr, state["snr_c"] / corr
    if 1.0 - ec < 1e-6:
        state["snr"] = 0.0
        return 1.0
    signal = max(em2 - ec * eg2, 0.0) / (1 - ec)
    noise = max(eg2 - em2, 0.0) / (1 - ec)
    snr = signal / (noise + 1e-30)
    state["snr"] = snr
    return 1.0 / math.sqrt(1.0 + snr)


# ----------------------------------------------------------------------------------------------------------------------
# sharded parameters (DTensor: FSDP2 `fully_shard`, tensor parallelism)
# ----------------------------------------------------------------------------------------------------------------------
def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (same storage), the tensor itself otherwise."""
    return t.to_local() if _is_dtensor(t) else t


_FLOAT16_MAX = torch.finfo(torch.float16).max


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype reductions of a tensor of `dtype` are accumulated and kept in: float32 for float16 / bfloat16 (a float16
    sum of more than 65504 ones, or of squares, overflows to inf; a bfloat16 one keeps 8 significant bits)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _total(x: torch.Tensor) -> float:
    """`float(x.sum())` over the whole tensor (in float32 for a half-precision `x`), also when `x` is a sharded DTensor
    (then the sum is all-reduced)."""
    s = x.sum(dtype=_acc_dtype(x.dtype))
    return float(s.full_tensor() if _is_dtensor(s) else s)


class _NeuronShards:
    """How the per-neuron (or per-tensor) sums of a sharded weight are completed, and how its per-neuron state is
    stored so that distributed checkpointing saves and restores every shard.

    The rotation works on the local shard; each per-neuron sum (norm, dot products, mean) is all-reduced over the
    mesh dimensions that shard a reduced axis (the columns of a row-neuron weight sharded on its input dim, the rows
    of a `Conv1D` weight sharded on dim 0 as `fully_shard` does, every axis for `per_neuron=False`). A mesh dimension
    that shards the neuron axis itself needs nothing: each rank holds whole neurons.
    """

    def __init__(self, p: torch.Tensor, neuron_dim: int, per_neuron: bool):
        from torch.distributed.tensor import Replicate, Shard

        if not per_neuron:
            reduced, keep = set(range(p.dim())), None
        elif neuron_dim == 1:
            reduced, keep = {0, *range(2, p.dim())}, 1
        else:
            reduced, keep = set(range(1, p.dim())), 0
        self.mesh = p.device_mesh
        self.groups = []
        self._sharded = []  # per mesh dim: whether it shards the neuron axis (state is sharded the same way)
        for i, placement in enumerate(p.placements):
            if placement.is_replicate():
                self._sharded.append(False)
            elif placement.is_shard() and placement.dim in reduced:
                self.groups.append(self.mesh.get_group(i))
                self._sharded.append(False)
            elif type(placement) is Shard and placement.dim == keep:
                self._sharded.append(True)
            else:
                raise ValueError(
                    f"Rotational updates of a DTensor parameter of shape {tuple(p.shape)} with placements "
                    f"{tuple(p.placements)} are not supported (only Replicate and Shard placements, as FSDP2's "
                    "`fully_shard` and tensor parallelism produce). Give such parameters a plain (non-rotational) "
                    "group: `rotational=False`."
                )
        self._replicate, self._shard = Replicate, Shard
        self.num_neurons = 1 if keep is None else p.shape[keep]
        self.per_neuron_numel = p.numel() // max(self.num_neurons, 1)

    def sum_(self, x: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) the partial per-neuron sums `x` in place over the shards of the reduced axes."""
        import torch.distributed as dist

        for group in self.groups:
            dist.all_reduce(x, group=group)
        return x

    def wrap(self, local: torch.Tensor, neuron_axis: int) -> torch.Tensor:
        """A per-neuron state tensor (`num_neurons` along `neuron_axis`, 1 elsewhere) as a DTensor on the mesh."""
        from torch.distributed.tensor import DTensor

        shape = [1] * local.dim()
        shape[neuron_axis] = self.num_neurons
        placements = [self._shard(neuron_axis) if s else self._replicate() for s in self._sharded]
        stride = torch.empty(shape, device="meta").stride()
        return DTensor.from_local(
            local, self.mesh, placements, run_check=False, shape=torch.Size(shape), stride=stride
        )


def _neuron_shards(p: torch.Tensor, neuron_dim: int, per_neuron: bool) -> _NeuronShards | None:
    return _NeuronShards(p, neuron_dim, per_neuron) if _is_dtensor(p) else None


# ----------------------------------------------------------------------------------------------------------------------
# rotational geometry
# ----------------------------------------------------------------------------------------------------------------------
def _rows(p: torch.Tensor) -> torch.Tensor:
    """`p` viewed as `(p.shape[0], rest)` (also when a local shard holds no rows)."""
    return p.view(p.shape[0], math.prod(p.shape[1:]))


def _neuron_major(t: torch.Tensor, neuron_dim: int, per_neuron: bool) -> tuple[torch.Tensor, int]:
    """`t` and its layout with the neuron axis first where it is dim 1 of a 3+-dim tensor (a transposed convolution's
    `(in, out, *kernel)` weight): then `t.transpose(0, 1)` (a view of `t`, `(out, in, *kernel)`) with `neuron_dim=0`,
    whose rows (made contiguous where needed, and written back through the view) are the output channels."""
    if per_neuron and neuron_dim == 1 and t.dim() > 2:
        return t.transpose(0, 1), 0
    return t, neuron_dim


def _has_neuron_view(t: torch.Tensor, neuron_dim: int, per_neuron: bool) -> bool:
    """Whether `_neuron_view(t, ...)` can share `t`'s storage: always for column neurons (a transpose), else only for a
    row-major tensor (not, e.g., a conv weight in `torch.channels_last` memory format, whose rows are strided)."""
    return (per_neuron and neuron_dim == 1) or t.is_contiguous()


def _is_dense(t: torch.Tensor) -> bool:
    """`t` fills its memory without gaps or overlaps in some dimension order (row-major, channels_last, a transpose):
    then `torch.empty_like(t)` has the same strides."""
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _neuron_view(p: torch.Tensor, neuron_dim: int, per_neuron: bool) -> torch.Tensor:
    """A 2D view of `p` with one neuron per row (shares storage with `p`)."""
    if not per_neuron:
        return p.view(1, p.numel())
    if neuron_dim == 1:
        if p.dim() != 2:  # callers pass a 3+-dim one through `_neuron_major` first
            raise ValueError(f"neuron_dim=1 is only supported for 2D weights, got shape {tuple(p.shape)}.")
        return p.t()
    return _rows(p)


def _init_rotational(
    p: torch.Tensor, state: dict, neuron_dim: int, per_neuron: bool, zero_mean: bool, update_norm_decay: float = 0.0
) -> None:
    """Centre the neurons of `p` (if `zero_mean`) and record their norms; with `update_norm_decay > 0` also create
    the (zero) update-norm EMA, so that the state has all its entries from the first step (distributed checkpointing
    builds its load template from a fresh optimizer's first step, taken with lr 0, where no rotation runs)."""
    shards = _neuron_shards(p, neuron_dim, per_neuron)
    if shards is not None:
        _init_rotational_sharded(p, state, neuron_dim, per_neuron, zero_mean, shards)
    else:
        data, neuron_dim = _neuron_major(p.data, neuron_dim, per_neuron)
        # a weight without a neuron view (channels_last, a transposed convolution's) is centred in a row-major copy
        # that is written back
        work = data if _has_neuron_view(data, neuron_dim, per_neuron) else data.contiguous()
        w = _neuron_view(work, neuron_dim, per_neuron)
        norm = w.norm(dim=1, keepdim=True)
        if zero_mean and w.shape[1] > 1:
            w.sub_(w.mean(dim=1, keepdim=True))
            w.mul_(norm / w.norm(dim=1, keepdim=True).clamp_min(1e-30))
            if work is not data:
                data.copy_(work)
        state["norm"] = norm.clone()
    if update_norm_decay > 0 and "update_norm_ema" not in state:
        # the shape `_rotate` stores: (neurons, 1), or (1, neurons) for the column neurons of a 2D weight
        neuron_dim = _neuron_major(p, neuron_dim, per_neuron)[1]
        ema = torch.zeros_like(_local(state["norm"]))
        if per_neuron and neuron_dim == 1:
            ema = ema.view(1, ema.numel())
        state["update_norm_ema"] = ema if shards is None else shards.wrap(ema, int(per_neuron and neuron_dim == 1))


def _needs_init(state: dict) -> bool:
    """Whether the rotational state of a tensor is still to be initialised (see `_ensure_rotational_state`)."""
    return "norm" not in state or state.get("norm_pending", False)


def _is_template_step(p: torch.Tensor, group: dict) -> bool:
    """A step with lr 0 and an all-zero gradient (the load template of `torch.distributed.checkpoint`); the
    whole-gradient check is all-reduced for a DTensor and taken only at lr 0, so it is the same on every rank."""
    return bool(group["lr"] == 0) and _total(p.grad.abs()) == 0


def _refuse_zero_neurons(p: torch.Tensor, state: dict, group: dict, neuron_dim: int) -> None:
    """Raise when the rotational tensor `p`, about to be initialised, has a neuron of norm 0 with a nonzero gradient
    (a rotation keeps each neuron's norm, so it would never train). The steps call it for every rotational tensor
    before any tensor is updated, so a refused step changes no weight and no state."""
    if not _needs_init(state) or _is_template_step(p, group):
        return
    w_norms: dict = {}
    g_norms: dict = {}
    _init_rotational(p, w_norms, neuron_dim, group["per_neuron"], False)
    _init_rotational(p.grad, g_norms, neuron_dim, group["per_neuron"], False)
    stuck = int(_total(((w_norms["norm"] == 0) & (g_norms["norm"] > 0)).to(torch.float32)))
    if stuck:
        raise ValueError(
            f"A rotational parameter of shape {tuple(p.shape)} has {stuck} neuron(s) of norm 0 with a nonzero "
            "gradient (e.g. LoRA's B, initialised at zero): a rotation keeps each neuron's norm, so they would "
            "never train. Put such parameters in a plain group (`rotational=False`); "
            "`rotational_param_groups(model, weight_decay)` (what passing the model does) does so for peft's "
            "LoRA B factors."
        )


def _ensure_rotational_state(p: torch.Tensor, state: dict, group: dict, neuron_dim: int) -> None:
    """Initialise the rotational state of `p` ([`_init_rotational`]) on its first step, unless that step is the load
    template of `torch.distributed.checkpoint` (DCP's `set_state_dict` / `get_state_dict` step a fresh optimizer with
    lr 0 and all-zero gradients to learn its state's keys, then load the checkpoint's values): there the entries are
    created from the weights as they are, without centring them (the weights are about to be, or have just been,
    loaded from the checkpoint, where they are already centred; centring again would move bfloat16 weights by up to
    2e-3), and `norm_pending` makes the next step initialise for real. In a run, a first step with lr 0 and an all-zero
    gradient (a warmup starting at 0, a LoRA A under a zero B) leaves the weights where they are either way, so the
    deferred initialisation gives the same result as an immediate one. Every initialised state has `norm_pending`
    (DCP loads only the keys of its template, so the key must be in every checkpoint); a state without it counts as
    initialised. Zero neurons with a nonzero gradient were refused before the step changed anything
    ([`_refuse_zero_neurons`])."""
    if not _needs_init(state):
        return
    template = _is_template_step(p, group)
    zero_mean = group["zero_mean"] and not template
    _init_rotational(p, state, neuron_dim, group["per_neuron"], zero_mean, group["update_norm_decay"])
    state["norm_pending"] = template
    if not template:
        _warn_if_immobile(p, group, neuron_dim)


def _warn_if_immobile(p: torch.Tensor, group: dict, neuron_dim: int) -> None:
    """Warn (at a tensor's first rotational step) when its neurons have nothing to rotate along: a neuron of one
    entry (fan-in 1, e.g. `nn.Linear(1, n)`) keeps its norm and so its value, and one of two entries with `zero_mean`
    is centred to `(a, -a)` of fixed norm. Such a tensor would silently never change."""
    if group["per_neuron"]:
        size = p.numel() // max(p.shape[1], 1) if neuron_dim == 1 else math.prod(p.shape[1:])
    else:
        size = p.numel()
    if size == 1 or (size == 2 and group["zero_mean"]):
        what = "one entry" if size == 1 else "two entries, centred to (a, -a) by zero_mean=True"
        fix = "" if size == 1 else ", or `zero_mean=False`"
        warnings.warn(
            f"A rotational parameter of shape {tuple(p.shape)} has neurons of {what}: a rotation keeps each "
            "neuron's norm, which leaves such a neuron nothing to move along, so this tensor will never change. Give "
            f"it a plain group (`rotational=False`){fix}.",
            stacklevel=3,  # the optimizer's step (torch's wrappers around it differ between versions)
        )


def _init_rotational_sharded(p, state, neuron_dim, per_neuron, zero_mean, shards: _NeuronShards) -> None:
    """`_init_rotational` on the local shard of a DTensor, with the per-neuron sums all-reduced."""
    data, neuron_dim = _neuron_major(_local(p.detach()), neuron_dim, per_neuron)
    work = data if _has_neuron_view(data, neuron_dim, per_neuron) else data.contiguous()
    w = _neuron_view(work, neuron_dim, per_neuron)
    acc = _acc_dtype(w.dtype)
    norm = shards.sum_(w.pow(2).sum(dim=1, keepdim=True, dtype=acc)).sqrt_()
    if zero_mean and shards.per_neuron_numel > 1:
        w.sub_(shards.sum_(w.sum(dim=1, keepdim=True, dtype=acc)).div_(shards.per_neuron_numel))
        w.mul_(norm / shards.sum_(w.pow(2).sum(dim=1, keepdim=True, dtype=acc)).sqrt_().clamp_min(1e-30))
        if work is not data:
            data.copy_(work)
    state["norm"] = shards.wrap(norm.to(w.dtype), 0)


# `||u_perp||^2 / ||u||^2` at or below this many ulps of the reduction dtype counts as rounding (u parallel to w)
_PARALLEL_ULPS = 1024


def _rotate(
    p: torch.Tensor,
    u: torch.Tensor,
    state: dict,
    angle: float,
    neuron_dim: int,
    per_neuron: bool,
    zero_mean: bool,
    update_norm_decay: float,
    u_scale: float = 1.0,
    scratch: torch.Tensor | None = None,
) -> None:
    """Rotate every neuron of `p` (in place) against the direction `u` by `angle` and keep its recorded norm.

    `scratch` (optional, at least `p.numel()` elements of `p`'s dtype) receives elementwise products, so the step
    allocates no parameter-sized temporaries.
    `u` is consumed (its mean and radial part are removed in place). With `update_norm_decay > 0` the angle is
    scaled by `||u|| / sqrt(EMA(||u||^2))` per neuron, `u_scale` being a scalar factor of `u` that was left out of it.
    A negative `u_scale` means `u` holds the negated direction (the rotation then turns the other way).
    With `angle <= 0` the weights stay as they are; with `update_norm_decay > 0` the EMA is still updated (the
    reference updates it on every step, and its bias correction `1 - decay**step` counts every step).
    The new weight is `cos(theta) r w/||w|| - sin(theta) r u_perp/||u_perp||` with `u_perp = u - (<w,u>/||w||^2) w`
    orthogonal to the *current* `w` (so its norm is the recorded `r`), written as one `a w + b u` pass with per-neuron
    `a`, `b` from three row reductions (no separate projection or renormalisation pass).
    """
    if angle <= 0 and not update_norm_decay > 0:
        return
    # A DTensor (FSDP2, tensor parallelism) is rotated on its local shard, the per-neuron sums all-reduced.
    shards = _neuron_shards(p, neuron_dim, per_neuron)
    if shards is not None:
        p, u = _local(p), _local(u)
    # a transposed convolution's (in, out, *kernel) weight: its output channels as the rows of (out, in, *kernel) views
    p, major = _neuron_major(p, neuron_dim, per_neuron)
    u = _neuron_major(u, neuron_dim, per_neuron)[0]
    neuron_dim = major
    target = None
    if not _has_neuron_view(p, neuron_dim, per_neuron):
        # e.g. a channels_last conv weight: rotate a row-major copy (the arithmetic of a contiguous weight, so the
        # result is the same) and write it back at the end
        target, p = p, p.contiguous()
    if not _has_neuron_view(u, neuron_dim, per_neuron):
        u = u.contiguous()  # `u` is consumed anyway
    if not per_neuron:
        w, uu, rd = p.view(1, p.numel()), u.view(1, u.numel()), 1
    elif neuron_dim == 1:
        if p.dim() != 2:
            raise ValueError(f"neuron_dim=1 is only supported for 2D weights, got shape {tuple(p.shape)}.")
        w, uu, rd = p, u, 0
    else:
        w, uu, rd = _rows(p), _rows(u), 1
    if uu.dtype != w.dtype:
        uu = uu.to(w.dtype)
    if shards is None:
        if zero_mean and w.shape[rd] > 1:
            uu.sub_(uu.mean(dim=rd, keepdim=True))
    elif zero_mean and shards.per_neuron_numel > 1:
        uu.sub_(shards.sum_(uu.sum(dim=rd, keepdim=True, dtype=_acc_dtype(uu.dtype))).div_(shards.per_neuron_numel))
    red_shape = (1, w.shape[1]) if rd == 0 else (w.shape[0], 1)
    # the per-neuron sums and coefficients in float32 for half-precision weights (a float16 ||u||^2 of a neuron of
    # more than 65504 entries overflows: the rotation was skipped)
    acc = _acc_dtype(w.dtype)
    norm = _local(state["norm"]).reshape(red_shape).to(acc)
    # row reductions: ||w||^2, <w, u>, ||u||^2 (vector_norm is fast along rows, slow along columns on CPU)
    buf = None if scratch is None else scratch[: w.numel()].view(w.shape)
    ww, wu, u2 = _dot(w, w, rd, buf, acc), _dot(w, uu, rd, buf, acc), _dot(uu, uu, rd, buf, acc)
    if shards is not None:
        ww, wu, u2 = shards.sum_(torch.stack([ww, wu, u2])).unbind(0)
    ww = ww.reshape(red_shape).clamp_min(1e-30)
    wu = wu.reshape(red_shape)
    u2 = u2.reshape(red_shape)
    c = wu / ww  # u_perp = u - c w is orthogonal to the current w
    up2 = (u2 - wu * c).clamp_min_(0.0)
    # `u2 - wu * c` cancels when u is (nearly) parallel to w and keeps a few ulps of `u2` (in `acc`) of rounding: a
    # neuron whose u is radial (fan-in 1, or fan-in 2 with `zero_mean`, where centred weights and updates lie on one
    # line) got a tangential norm of pure rounding noise, rotated along it and came out scaled by ~cos(theta) (float32)
    # or up to 20% off its norm (bfloat16). Below `_PARALLEL_ULPS` ulps there is no tangential direction: the neuron
    # is only brought back to its norm.
    moving = up2 > max(1e-12, _PARALLEL_ULPS * torch.finfo(acc).eps) * u2
    unorm = up2.sqrt_()
    sign = -1.0 if u_scale < 0 else 1.0
    if update_norm_decay > 0:
        t = state["step"]
        un = unorm * abs(u_scale)
        ema = state.get("update_norm_ema")
        ema = torch.zeros_like(un) if ema is None else _local(ema).reshape(red_shape).to(un.dtype)
        ema = ema * update_norm_decay + (1 - update_norm_decay) * un.pow(2)
        # kept in the weight's dtype, as every state tensor (torch's `load_state_dict` casts them to it)
        if w.dtype == torch.float16 and not bool(torch.isfinite(ema).all() and ema.max() <= _FLOAT16_MAX):
            raise ValueError(
                "update_norm_decay > 0 on float16 weights: the running mean of a neuron's squared update norm "
                f"exceeds float16's range ({_FLOAT16_MAX}; neurons of more than ~65504 entries under a sign update), "
                "so the rotation would stop silently. Keep the weights in bfloat16 or float32 (master weights), or "
                "set update_norm_decay=0."
            )
        kept = ema.to(w.dtype)
        state["update_norm_ema"] = kept if shards is None else shards.wrap(kept, 1 - rd)
        if angle <= 0:  # a step at lr 0: the EMA (whose bias correction counts every step) moved, the weights stay
            return
        ref = (ema / (1 - update_norm_decay**t)).sqrt()
        theta = angle * un / ref.clamp_min(1e-30)
        cos, sin = torch.cos(theta), torch.sin(theta) * sign
    else:
        cos, sin = math.cos(angle), math.sin(angle) * sign
    scale = norm / ww.sqrt_()  # brings w back to its recorded norm
    # new w = cos(theta) r w/||w|| - sin(theta) r u_perp/||u_perp|| = a w + b u with b = -sin r/||u_perp||, a = .. - b c
    b = torch.where(moving, (norm * sin).div_(unorm.clamp_min(1e-30)).neg_(), torch.zeros_like(unorm))
    a = torch.where(moving, scale * cos - b * c, scale)
    w.mul_(a).addcmul_(uu, b)
    if target is not None:
        target.copy_(p)


def _dot(x: torch.Tensor, y: torch.Tensor, dim: int, buf: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor:
    """Row (dim=1) or column (dim=0) dot products of two 2D tensors, optionally through a scratch buffer, summed and
    returned in `acc` (float32 for half-precision tensors)."""
    if x is y and dim == x.dim() - 1:  # fast along rows; slow along columns on CPU
        return torch.linalg.vector_norm(x, dim=dim, dtype=None if acc == x.dtype else acc).square_()
    if buf is None:
        if acc == x.dtype:
            return torch.linalg.vecdot(x, y, dim=dim)
        return torch.mul(x, y).sum(dim, dtype=acc)
    return torch.mul(x, y, out=buf).sum(dim, dtype=acc)


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
        lr, weight_decay = _python_number(lr), _python_number(weight_decay)  # numpy numbers as Python ones
        _check_common(lr, weight_decay)
        betas = _check_betas(betas)
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, nesterov=nesterov)
        _parse_group_values(defaults)  # a numpy bool switch as the Python bool every group gets
        self._model_param_order = _model_order(params, None)
        super().__init__(_resolve_params(params, weight_decay, owner=type(self).__name__), defaults)
        self.register_load_state_dict_pre_hook(legacy_layout_pre_hook)  # a state of the earlier ConvTranspose groups

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group (also used by the constructor); its values are validated like the constructor's."""
        _list_params(param_group)
        _refuse_complex(param_group.get("params"), type(self).__name__)
        _check_group({**self.defaults, **param_group}, type(self).__name__)
        _parse_group_values(param_group)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        _refuse_sparse_gradients(self.param_groups, type(self).__name__)
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
        lr, weight_decay, snr_beta = (_python_number(v) for v in (lr, weight_decay, snr_beta))  # numpy as Python
        _check_common(lr, weight_decay)
        betas = _check_betas(betas)
        _check_unit_interval("snr_beta", snr_beta)
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            nesterov=nesterov,
            inverse_bias_correction=inverse_bias_correction,
            snr_correction=snr_correction,
            snr_beta=snr_beta,
        )
        _parse_group_values(defaults)  # a numpy bool switch as the Python bool every group gets
        self._model_param_order = _model_order(params, None)
        super().__init__(_resolve_params(params, weight_decay, owner=type(self).__name__), defaults)
        self.register_load_state_dict_pre_hook(legacy_layout_pre_hook)  # a state of the earlier ConvTranspose groups

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group (also used by the constructor); its values are validated like the constructor's."""
        _list_params(param_group)
        _refuse_complex(param_group.get("params"), type(self).__name__)
        _check_group({**self.defaults, **param_group}, type(self).__name__)
        _parse_group_values(param_group)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        _refuse_sparse_gradients(self.param_groups, type(self).__name__)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                c = _lion_direction(p.grad, state, group["betas"], group["nesterov"])
                u = torch.sign(c)
                count = _total(u.abs())  # ||sign(c)||^2 = number of non-zero signs (of the whole tensor)
                scale = _step_scale(state, group, p.grad)
                p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled decay, also when u = 0
                if count == 0:
                    continue
                u.mul_(math.sqrt(p.numel() / count))
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
        model (`nn.Module`, *optional*): the model the parameters belong to; each tensor's rotational status and
            neuron layout then come from it (as `rotational_param_groups` decides), whatever groups `params` holds.
            A frozen tensor of the model (`requires_grad=False`) gets the layout it would have if trainable and is
            skipped by `step()` like any tensor without a gradient; a tensor not in `model.parameters()` is refused.
        neuron_dim (`int`, *optional*): layout of 2+-dim tensors in dict param groups that carry no `neuron_dim`
            (0: rows are neurons, 1: columns). Without it (and without a model) such groups are refused, because
            transformers' `Conv1D` (GPT-2) stores neurons as columns and a tied embedding cannot be recognised.
            A flat iterable of tensors (`model.parameters()`) follows the reference convention: rows.
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
        neuron_dim: int | None = None,
    ):
        # numpy numbers as Python ones
        lr, weight_decay, angle, snr_beta, update_norm_decay = (
            _python_number(v) for v in (lr, weight_decay, angle, snr_beta, update_norm_decay)
        )
        _check_common(lr, weight_decay)
        betas = _check_betas(betas)
        _check_angle(angle)
        if angle is None and weight_decay == 0:
            raise ValueError("LionAR needs `weight_decay > 0` (it sets the equilibrium angle) or an explicit `angle`.")
        _check_unit_interval("update_norm_decay", update_norm_decay)
        _check_unit_interval("snr_beta", snr_beta)
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
        _parse_group_values(defaults)  # a numpy bool switch as the Python bool every group gets
        groups = _resolve_params(params, weight_decay, model, neuron_dim, "LionAR", needs_layout=True)
        self._default_neuron_dim = neuron_dim
        self._model_param_order = _model_order(params, model)
        super().__init__(groups, defaults)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of `state_dict()`; one saved before transposed convolutions rotated per output channel
        resumes with the layout it was written with (a warning says so)."""
        _load_legacy_layout(self, state_dict, "LionAR")
        _refuse_mismatched_state(self, state_dict, "LionAR")
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group (also used by the constructor) with the constructor's per-group defaults and checks.

        The group's layout follows the rule for dict param groups: 2+-dim tensors need `neuron_dim` (or
        `rotational=False`) unless the optimizer was given `neuron_dim=`; `base_lr` (the reference of the schedule
        factor `lr_t / lr_0`) is the group's `lr` when it is added.
        """
        if isinstance(param_group, dict):
            _list_params(param_group)
            _refuse_complex(param_group.get("params"), "LionAR")
        group = _resolve_added_group(
            param_group, self.defaults["weight_decay"], getattr(self, "_default_neuron_dim", None), "LionAR"
        )
        _check_group({**self.defaults, **group}, "LionAR", rotational=True)
        _parse_group_values(group)
        super().add_param_group(group)
        self.param_groups[-1].setdefault("base_lr", self.param_groups[-1]["lr"])

    def _is_rotational(self, p: torch.Tensor, group: dict) -> bool:
        return _is_rotational(p, group)

    def _neuron_dim(self, p: torch.Tensor, group: dict) -> int:
        return int(group.get("neuron_dim", 0))

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
        _refuse_sparse_gradients(self.param_groups, type(self).__name__)
        angles = {}
        for i, group in enumerate(self.param_groups):  # before any tensor or state changes, as for sparse gradients
            for p in group["params"]:
                if p.grad is not None and self._is_rotational(p, group):
                    _refuse_zero_neurons(p, self.state.get(p, {}), group, self._neuron_dim(p, group))
            if any(p.grad is not None for p in group["params"]):
                rot = any(p.grad is not None and self._is_rotational(p, group) for p in group["params"])
                angles[i] = _step_angle(self, group, "LionAR") if rot else _check_step_lr(group, "LionAR")
        for i, group in enumerate(self.param_groups):
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
                _ensure_rotational_state(p, state, group, nd)
                scale = _step_scale(state, group, p.grad)
                angle = angles[i] * scale
                if angle <= 0 and not group["update_norm_decay"] > 0:
                    continue  # (with the EMA, `_rotate` still updates it: the step counts in its bias correction)
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


def _is_rotational(p: torch.Tensor, group: dict) -> bool:
    """Per-tensor rotational status: the group's `rotational` flag, else `weight_decay != 0` (REQ), and 2+ dims."""
    flag = group.get("rotational")
    if flag is None:
        return group["weight_decay"] != 0 and p.dim() > 1
    return bool(flag) and p.dim() > 1


_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _same_memory_layout(p: torch.Tensor, state: dict) -> bool:
    """Whether (the local shards of) `p`, its gradient and its AdamW moments are dense with the same strides: torch's
    fused AdamW kernel walks their memory in storage order, so a channels_last weight with a row-major gradient or
    moment (set by hand, or loaded from a contiguous run's checkpoint) would pair up the wrong elements."""
    local = _local(p)
    if not _is_dense(local):
        return False
    others = [p.grad] + [state[k] for k in ("exp_avg", "exp_avg_sq") if isinstance(state.get(k), torch.Tensor)]
    return all(t is None or _local(t).stride() == local.stride() for t in others)


class RotationalWrapper(Optimizer):
    r"""Rotational (angle-controlled) version of AdamW, Lion or SGD with momentum.

    Rotational status is decided per tensor (group flag `rotational`, else `weight_decay != 0` and 2+ dims, as in the
    reference rotational wrapper), so `RotationalWrapper(model.parameters())` works; tensors without a gradient are
    skipped. For a rotational tensor the update direction `u` of the inner optimizer (AdamW: `m_hat/(sqrt(v_hat)+eps)`,
    SGD: its momentum buffer or Nesterov direction, Lion: `sign(c)`, all without learning rate and weight decay) is
    computed in place (foreach moment updates, reusable scratch buffers, no clone or copy-back; for AdamW on CPU/CUDA
    the moments and the direction come from one pass of torch's fused AdamW kernel unless `fused=False`) from moment
    buffers kept in this wrapper's state (same names and update rules as
    `torch.optim.AdamW` / `torch.optim.SGD` / `Lion`); each neuron is then rotated against `u` by
    `eta_r * (lr_t/lr_0)` (scaled by `||u||/EMA(||u||)` when `update_norm_decay > 0`, as in the reference) and keeps
    its norm. Non-rotational tensors get the ordinary step of a real inner optimizer instance that shares this
    wrapper's param groups (the rotational tensors' gradients are hidden from it during its step).

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
        model (`nn.Module`, *optional*): the model the parameters belong to (rotational status and `Conv1D` layout;
            frozen tensors of the model are accepted as in `LionAR`).
        neuron_dim (`int`, *optional*): layout of 2+-dim tensors in dict param groups without one (see `LionAR`).
        **inner_kwargs: passed to the inner optimizer (`betas`, `eps`, `momentum`, `nesterov`, `dampening`, ...).
            With `inner="adamw"`, `fused=False` also makes the rotational tensors' direction use separate foreach
            passes instead of the fused AdamW kernel.
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
        neuron_dim: int | None = None,
        **inner_kwargs,
    ):
        if inner not in _INNER:
            raise ValueError(f"`inner` must be one of {sorted(_INNER)}, got {inner!r}.")
        # numpy numbers as Python ones (the inner optimizer's below)
        lr, weight_decay, angle, update_norm_decay = (
            _python_number(v) for v in (lr, weight_decay, angle, update_norm_decay)
        )
        _check_common(lr, weight_decay)
        _check_angle(angle)
        if angle is None and weight_decay == 0:
            raise ValueError("RotationalWrapper needs `weight_decay > 0` or an explicit `angle`.")
        _check_unit_interval("update_norm_decay", update_norm_decay)
        if inner == "sgdm":
            inner_kwargs.setdefault("momentum", 0.9)
            if not _positive_finite(inner_kwargs["momentum"]):
                raise ValueError(
                    f"`momentum` must be a finite number > 0 for inner='sgdm' (SGD with momentum), got "
                    f"{inner_kwargs['momentum']!r}."
                )
        _parse_group_values(inner_kwargs)  # betas as floats, numpy numbers / bools as Python ones
        if "dampening" in inner_kwargs and not (
            _is_number(inner_kwargs["dampening"]) and 0.0 <= inner_kwargs["dampening"] <= 1.0
        ):
            raise ValueError(f"`dampening` must be a number in [0, 1], got {inner_kwargs['dampening']!r}.")
        if "eps" in inner_kwargs and not (_is_number(inner_kwargs["eps"]) and 0.0 <= inner_kwargs["eps"] < math.inf):
            raise ValueError(f"`eps` must be a finite number >= 0, got {inner_kwargs['eps']!r}.")
        for key in ("amsgrad", "maximize", "differentiable", "capturable"):
            if inner_kwargs.get(key):
                raise ValueError(f"RotationalWrapper does not support `{key}=True` for the inner optimizer.")
        groups = _resolve_params(params, weight_decay, model, neuron_dim, "RotationalWrapper", needs_layout=True)
        self._default_neuron_dim = neuron_dim
        self._model_param_order = _model_order(params, model)
        self._ready = False  # torch's Optimizer.__init__ adds the groups through `add_param_group`
        self.inner_name = inner
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            angle=angle,
            zero_mean=zero_mean,
            per_neuron=per_neuron,
            update_norm_decay=update_norm_decay,
        )
        _parse_group_values(defaults)  # a numpy bool switch as the Python bool every group gets
        # every group checked (with the values it will get) before the inner optimizer sees it: torch's optimizers
        # check only their constructor arguments, and a bad group value would otherwise fail inside `step()`
        for g in groups:
            self._check_new_group({**inner_kwargs, **defaults, **g})
            _parse_group_values(g)
        self.inner = _INNER[inner](groups, lr=lr, weight_decay=weight_decay, **inner_kwargs)
        super().__init__([dict(g) for g in self.inner.param_groups], defaults)
        self._buffers: dict = {}
        for own, shared in zip(self.param_groups, self.inner.param_groups):
            for key, value in own.items():
                shared.setdefault(key, value)
            shared.setdefault("base_lr", shared["lr"])
        self.param_groups = self.inner.param_groups
        # One state mapping for both (rotational tensors: the wrapper's entries; the others: the inner optimizer's), so
        # that `state_dict()` is a standard optimizer state dict that torch.distributed.checkpoint (FSDP2) can save.
        self.inner.state = self.state
        self._ready = True

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group to the wrapper and its inner optimizer (they share `param_groups`).

        The group gets the inner optimizer's defaults (`betas`, `eps`, `momentum`, ...) and the wrapper's
        (`angle`, `zero_mean`, ..., `base_lr` = its `lr`), with the checks and layout rule of the constructor.
        """
        if not getattr(self, "_ready", False):  # Optimizer.__init__: the group is already in the inner optimizer
            self._check_new_group({**self.defaults, **param_group})
            super().add_param_group(param_group)
            return
        if isinstance(param_group, dict):
            _list_params(param_group)
            _refuse_complex(param_group.get("params"), "RotationalWrapper")
        group = _resolve_added_group(
            param_group, self.defaults["weight_decay"], getattr(self, "_default_neuron_dim", None), "RotationalWrapper"
        )
        self._check_new_group({**self.inner.defaults, **self.defaults, **group})
        _parse_group_values(group)
        self.inner.add_param_group(group)  # appends to the shared list, filling the inner defaults
        shared = self.inner.param_groups[-1]
        for key, value in self.defaults.items():
            shared.setdefault(key, value)
        shared.setdefault("base_lr", shared["lr"])

    def _check_new_group(self, merged: dict) -> None:
        """The checks of a param group (with the defaults it gets merged in), at construction and in
        `add_param_group`: the Lion-family group checks plus the inner optimizer's `momentum` and unsupported flags."""
        _refuse_complex(merged.get("params"), "RotationalWrapper")
        _check_group(merged, "RotationalWrapper", rotational=True)
        if self.inner_name == "sgdm" and not _positive_finite(merged.get("momentum")):
            raise ValueError(
                "`momentum` of a RotationalWrapper param group must be a finite number > 0 for inner='sgdm' (SGD with "
                f"momentum), got {merged.get('momentum')!r}."
            )
        for key in ("amsgrad", "maximize", "differentiable", "capturable"):
            if merged.get(key):
                raise ValueError(f"RotationalWrapper does not support `{key}=True` for the inner optimizer.")

    def _is_rotational(self, p: torch.Tensor, group: dict) -> bool:
        return _is_rotational(p, group)

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
        """The first-moment buffer of `p` (wrapper state for rotational tensors, else the inner optimizer's)."""
        for st in (self.state.get(p, {}), self.inner.state.get(p, {})):
            for key in ("exp_avg", "momentum_buffer"):
                if isinstance(st.get(key), torch.Tensor):
                    return st[key]
        return None

    def _scratch(self, like: torch.Tensor, numel: int, slot: int) -> torch.Tensor:
        """A reusable flat buffer (per device, dtype and slot) of at least `numel` elements; never checkpointed."""
        key = (like.device, like.dtype, slot)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, device=like.device, dtype=like.dtype)
            self._buffers[key] = buf
        return buf

    def _start_step(self, p: torch.Tensor) -> dict:
        """Count a step of `p` and create its zeroed Lion / AdamW moment buffers on the first one; returns its state."""
        st = self.state[p]
        st["step"] = st.get("step", 0) + 1
        if self.inner_name != "sgdm" and "exp_avg" not in st:
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.inner_name == "adamw":
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    def _update_moments(self, group: dict, params: list[torch.Tensor]) -> None:
        """Advance the inner optimizer's moment buffers of `params` (foreach kernels, in place; local shards of
        DTensors)."""
        states = [self._start_step(p) for p in params]
        if self.inner_name == "sgdm":
            old = [i for i, st in enumerate(states) if "momentum_buffer" in st]
            for p, st in zip(params, states):
                if "momentum_buffer" not in st:  # torch.optim.SGD: the first buffer is the gradient itself
                    st["momentum_buffer"] = p.grad.detach().clone()
            if old:
                bufs = [_local(states[i]["momentum_buffer"]) for i in old]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, [_local(params[i].grad) for i in old], alpha=1 - group.get("dampening", 0.0))
            return
        grads = [_local(p.grad) for p in params]
        b1, b2 = group["betas"]
        if self.inner_name == "adamw":
            torch._foreach_lerp_([_local(st["exp_avg"]) for st in states], grads, 1 - b1)
            vs = [_local(st["exp_avg_sq"]) for st in states]
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)

    def _uses_fused_direction(self, group: dict, params: list[torch.Tensor]) -> bool:
        """Whether the AdamW moments and direction of `params` come from torch's fused AdamW kernel (one pass)."""
        if self.inner_name != "adamw" or group.get("fused") is False or not hasattr(torch, "_fused_adamw_"):
            return False
        return all(
            p.device.type in ("cpu", "cuda")
            and p.dtype in _FUSED_DTYPES
            and (p.grad is None or (p.grad.dtype == p.dtype and not p.grad.is_sparse))
            and _same_memory_layout(p, self.state.get(p, {}))
            for p in params
        )

    def _fused_adamw_direction(self, group: dict, p: torch.Tensor, out: torch.Tensor) -> float:
        """Advance `p`'s AdamW moments and write the *negated* direction `-m_hat/(sqrt(v_hat)+eps)` into `out`.

        torch's fused AdamW kernel applied with `lr=1`, `weight_decay=0` to a zeroed `out` in place of the parameter
        does the moment update, both bias corrections and the division in one pass; the return value -1 tells
        `_rotate` that `out` points against the direction.
        """
        st = self._start_step(p)
        b1, b2 = group["betas"]
        out.zero_()
        torch._fused_adamw_(
            [out],
            [_local(p.grad)],
            [_local(st["exp_avg"])],
            [_local(st["exp_avg_sq"])],
            [],
            [torch.tensor(float(st["step"]), dtype=torch.float32, device=p.device)],
            lr=1.0,
            beta1=b1,
            beta2=b2,
            weight_decay=0.0,
            eps=group["eps"],
            amsgrad=False,
            maximize=False,
        )
        return -1.0

    def _direction(self, group: dict, p: torch.Tensor, out: torch.Tensor) -> float:
        """Write the inner optimizer's update direction of `p` (divided by the returned scalar factor) into `out`
        (the local shard's for a DTensor)."""
        st = self.state[p]
        grad = _local(p.grad)
        if self.inner_name == "sgdm":
            if group.get("nesterov", False):
                torch.add(grad, _local(st["momentum_buffer"]), alpha=group["momentum"], out=out)
            else:
                out.copy_(_local(st["momentum_buffer"]))
            return 1.0
        b1, b2 = group["betas"]
        m = _local(st["exp_avg"])
        if self.inner_name == "lion":
            if group.get("nesterov", False):
                m.lerp_(grad, 1 - b2)
                torch.lerp(m, grad, 1 - b1, out=out)
            else:
                torch.lerp(m, grad, 1 - b1, out=out)
                m.lerp_(grad, 1 - b2)
            out.sign_()
            return 1.0
        # AdamW without lr and weight decay: u = (m/bc1) / (sqrt(v)/sqrt(bc2) + eps)
        #                                    = m / (sqrt(v) + eps sqrt(bc2)) * sqrt(bc2)/bc1
        bc2 = math.sqrt(1 - b2 ** st["step"])
        torch.sqrt(_local(st["exp_avg_sq"]), out=out)
        out.add_(group["eps"] * bc2)
        torch.div(m, out, out=out)
        return bc2 / (1 - b1 ** st["step"])

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        _refuse_sparse_gradients(self.param_groups, "RotationalWrapper")
        rotational, hidden, plain = [], [], False
        for group in self.param_groups:
            rot = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if _is_rotational(p, group):
                    rot.append(p)
                else:
                    plain = True
            if rot:
                # before anything changes: the angle (a value it cannot use, e.g. an sgdm momentum >= 1 without an
                # `angle`, fails here) and the zero-neuron refusal
                angle = _step_angle(self, group, "RotationalWrapper")
                rotational.append((group, rot, angle))
                hidden += [(p, p.grad) for p in rot]
        for group, rot, _ in rotational:
            nd = int(group.get("neuron_dim", 0))
            for p in rot:
                _refuse_zero_neurons(p, self.state.get(p, {}), group, nd)
        if plain:
            for p, _ in hidden:
                p.grad = None
            try:
                self.inner.step()
            finally:
                for p, g in hidden:
                    p.grad = g
        for group, rot, angle in rotational:
            fused = self._uses_fused_direction(group, rot)
            if not fused:
                self._update_moments(group, rot)
            nd = int(group.get("neuron_dim", 0))
            numel = max(_local(p).numel() for p in rot)
            for p in rot:
                local = _local(p)  # a DTensor's direction and rotation are computed on its local shard
                if local.is_contiguous():
                    u = self._scratch(local, numel, 0)[: local.numel()].view(local.shape)
                else:  # the strides of the weight (channels_last), which its gradient and moments share
                    u = torch.empty_like(local)
                scale = self._fused_adamw_direction(group, p, u) if fused else self._direction(group, p, u)
                state = self.state[p]
                _ensure_rotational_state(p, state, group, nd)
                # with the update-norm EMA, a step at lr 0 still updates it (the reference counts every step)
                if angle > 0 or group["update_norm_decay"] > 0:
                    _rotate(
                        p,
                        u,
                        state,
                        angle,
                        nd,
                        group["per_neuron"],
                        group["zero_mean"],
                        group["update_norm_decay"],
                        scale,
                        self._scratch(local, numel, 1),
                    )
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of `state_dict()`; one with a separate 'inner' entry (written before the wrapper and its
        inner optimizer shared one state mapping) is merged into it."""
        state_dict = dict(state_dict)
        inner_sd = state_dict.pop("inner", None)
        if inner_sd is not None:
            state_dict["state"] = {**inner_sd.get("state", {}), **state_dict.get("state", {})}
        _load_legacy_layout(self, state_dict, "RotationalWrapper")  # an older layout of transposed convolutions
        _refuse_mismatched_state(self, state_dict, "RotationalWrapper")
        super().load_state_dict(state_dict)
        # Group keys a state dict of an older torch (or of this wrapper before an option existed) lacks: torch's own
        # optimizers fill them in `__setstate__`, which would also turn the wrapper's integer steps into tensors.
        for group in self.param_groups:
            for key, value in {**self.inner.defaults, **self.defaults}.items():
                group.setdefault(key, value)
        self.inner.param_groups = self.param_groups
        self.inner.state = self.state
