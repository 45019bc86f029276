"""Update-size metrics (l2 update norm, angular update, relative representation change, gradient-momentum cosine).

Pure functions carry the math; `UpdateMetricsCallback` measures them around every (k-th) optimizer step of a
`transformers.Trainer`, logs them and plots them. Sharded tensors (DTensors: FSDP2's `fully_shard`, tensor
parallelism) are measured whole: each sum runs on the local shard and is all-reduced over the shards (one collective
per device mesh and call), so every rank gets the value of one process holding the full tensors.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from transformers import TrainerCallback

from ..utils.distributed import is_dtensor
from .normalized import check_neuron_dim

__all__ = [
    "UpdateMetricsCallback",
    "angular_update",
    "gradient_momentum_cosine",
    "l2_update_norm",
    "plot_update_metrics",
    "relative_representation_change",
    "relative_update_norms",
]

METRIC_KEYS = ("update/relative_l2", "update/angle", "update/rrc", "update/grad_momentum_cos")


def _whole_sums(sums: list[torch.Tensor]) -> list[float]:
    """`float` of each 0-dim sum in `sums`; a sum over a sharded DTensor (a DTensor with partial placements) is
    completed over its shards, all such sums on one mesh with one collective."""
    out: list[float | None] = [None] * len(sums)
    sharded: dict = {}
    for i, s in enumerate(sums):
        if is_dtensor(s):
            sharded.setdefault((s.device_mesh, tuple(s.placements)), []).append(i)
        else:
            out[i] = float(s)
    if sharded:
        from torch.distributed.tensor import DTensor

        for (mesh, placements), idx in sharded.items():
            local = torch.stack([sums[i].to_local() for i in idx])
            total = DTensor.from_local(local, mesh, placements, run_check=False).full_tensor()
            for i, v in zip(idx, total.tolist()):
                out[i] = v
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (gathered on every rank), the tensor itself otherwise."""
    return t.full_tensor() if is_dtensor(t) else t


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Refuse two tensors of different shapes: the metrics subtract or multiply them elementwise, and torch would
    broadcast, e.g., a `(3, 3)` weight against a `(3,)` one into a silently wrong value."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{what} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")


def l2_update_norm(old: Iterable[torch.Tensor], new: Iterable[torch.Tensor]) -> float:
    """`sqrt(sum_k ||new_k - old_k||^2)` over paired tensors (whole tensors also when they are sharded DTensors)."""
    total = 0.0
    sharded = []
    for k, (a, b) in enumerate(zip(old, new, strict=True)):
        _check_same_shape(a, b, f"l2_update_norm: old and new tensor {k}")
        sq = (b.detach().double() - a.detach().double()).pow(2).sum()
        if is_dtensor(sq):
            sharded.append(sq)
        else:
            total += float(sq)
    return math.sqrt(total + sum(_whole_sums(sharded)))


def relative_update_norms(
    old: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], min_dim: int = 2
) -> dict[str, float]:
    """Per-tensor relative update `||w_new - w_old|| / ||w_old||` (the paper's update-size measure).

    Args:
        old, new (`Mapping[str, torch.Tensor]`): the tensors before and after the step, by name (sharded DTensors are
            measured whole).
        min_dim (`int`, *optional*, defaults to 2): only tensors with at least this many dimensions (weight matrices;
            biases and gains start at or near zero norm, where the ratio says little).

    Returns:
        `dict[str, float]`: one ratio per tensor whose old norm is non-zero.
    """
    if set(old) != set(new):
        raise ValueError("`old` and `new` must hold the same tensor names.")
    out = {}
    sharded_names, sharded_sums = [], []
    for name, a in old.items():
        _check_same_shape(a, new[name], f"relative_update_norms: old and new {name!r}")
        if a.dim() < min_dim:
            continue
        a64 = a.detach().double()
        if is_dtensor(a64):
            sharded_names.append(name)
            sharded_sums += [a64.pow(2).sum(), (new[name].detach().double() - a64).pow(2).sum()]
            continue
        base = float(a64.norm())
        if base > 0:
            out[name] = float((new[name].detach().double() - a64).norm()) / base
    if sharded_names:
        sums = _whole_sums(sharded_sums)
        for i, name in enumerate(sharded_names):
            base, diff = sums[2 * i], sums[2 * i + 1]
            if base > 0:
                out[name] = math.sqrt(diff) / math.sqrt(base)
        out = {name: out[name] for name in old if name in out}  # the order of `old`
    return out


def angular_update(old: torch.Tensor, new: torch.Tensor, neuron_dim: int = 0) -> torch.Tensor:
    """Per-neuron angle `arccos(<w_t, w_t+1> / (||w_t|| ||w_t+1||))` in radians.

    Args:
        old, new (`torch.Tensor`): a weight before and after the step, 2+ dims.
        neuron_dim (`int`, *optional*, defaults to 0): 0 when neurons are rows (`nn.Linear`), 1 when they are columns
            (HF `Conv1D`) or lie along dim 1 (a transposed convolution's `(in, out, *kernel)` weight). Anything else
            (-1, 2, `"1"`, `True`) raises `ValueError`, as in the normalized optimizers.

    Returns:
        `torch.Tensor`: one angle per neuron (float64; every neuron's, on every rank, for sharded DTensors); NaN for a
        neuron that is zero before or after the step (it has no direction, e.g. a row of peft's zero-initialised
        `lora_B`).
    """
    check_neuron_dim(neuron_dim, " of angular_update")
    if old.shape != new.shape or old.dim() < 2:
        raise ValueError(f"angular_update needs two tensors of the same 2+-dim shape, got {old.shape} / {new.shape}.")
    a, b = old.detach().double(), new.detach().double()
    if neuron_dim == 1:  # columns of a Conv1D weight; output channels of a transposed convolution's (in, out, *k)
        a, b = a.transpose(0, 1), b.transpose(0, 1)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if is_dtensor(a):  # per-neuron sums over the whole neuron, gathered for every neuron in one collective
        dot, aa, bb = _full(torch.stack([(a * b).sum(1), (a * a).sum(1), (b * b).sum(1)]))
        norms = aa.sqrt() * bb.sqrt()
    else:
        dot, norms = (a * b).sum(1), a.norm(dim=1) * b.norm(dim=1)
    angle = torch.arccos((dot / norms.clamp_min(1e-300)).clamp(-1.0, 1.0))
    return angle.masked_fill(norms == 0, float("nan"))


def relative_representation_change(
    inputs: torch.Tensor, old_weight: torch.Tensor, new_weight: torch.Tensor, transposed: bool = False
) -> float:
    """`||X dW^T||_F / ||X W^T||_F` for a linear map `Y = X W^T` (or `Y = X W` when `transposed`, HF `Conv1D`).

    Args:
        inputs (`torch.Tensor`): layer inputs `X` of shape `(..., in_features)` from a fixed probe batch.
        old_weight, new_weight (`torch.Tensor`): the weight before and after the step (a sharded DTensor is gathered).
        transposed (`bool`, *optional*, defaults to `False`): weight stored as `(in, out)`.

    Returns:
        `float`: the ratio; NaN where `||X W^T||_F` is 0 (e.g. peft's zero-initialised `lora_B`), which has no relative
        change.
    """
    _check_same_shape(old_weight, new_weight, "relative_representation_change: old_weight and new_weight")
    if old_weight.dim() != 2 or inputs.dim() < 1 or inputs.shape[-1] != old_weight.shape[0 if transposed else 1]:
        layout = "(in_features, out_features) for transposed=True" if transposed else "(out_features, in_features)"
        raise ValueError(
            f"relative_representation_change needs a 2-dim weight {layout} and inputs whose last dim is its "
            f"in_features, got inputs {tuple(inputs.shape)} and weight {tuple(old_weight.shape)}."
        )
    x = inputs.detach().double().reshape(-1, inputs.shape[-1])
    w0, w1 = _full(old_weight.detach()).double(), _full(new_weight.detach()).double()
    if not transposed:
        w0, w1 = w0.t(), w1.t()
    base = (x @ w0).norm()
    if base == 0:
        return float("nan")
    return float((x @ (w1 - w0)).norm() / base)


def gradient_momentum_cosine(grads: Iterable[torch.Tensor], momenta: Iterable[torch.Tensor]) -> float:
    """Cosine between the concatenated gradients and the concatenated momentum buffers (NaN if either is zero); sharded
    DTensors count whole."""
    dot = gg = mm = 0.0
    sharded = []
    for k, (g, m) in enumerate(zip(grads, momenta, strict=True)):
        _check_same_shape(g, m, f"gradient_momentum_cosine: gradient and momentum {k}")
        g, m = g.detach().double(), m.detach().double()
        if is_dtensor(g):
            sharded += [(g * m).sum(), g.pow(2).sum(), m.pow(2).sum()]
            continue
        dot += float((g * m).sum())
        gg += float(g.pow(2).sum())
        mm += float(m.pow(2).sum())
    if sharded:
        sums = _whole_sums(sharded)
        dot, gg, mm = dot + sum(sums[0::3]), gg + sum(sums[1::3]), mm + sum(sums[2::3])
    if gg == 0 or mm == 0:
        return float("nan")
    return dot / math.sqrt(gg * mm)


def _reshard(model: nn.Module) -> None:
    """Put FSDP2 modules back on their sharded parameters after a forward outside the training step: a module with
    `reshard_after_forward=False` (the root, accelerate's final norm + LM head) otherwise keeps its unsharded copies
    registered, the optimizer steps the sharded ones, and the next forward would run on the stale copies."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without distributed support
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    """peft LoRA layers around a linear map (`nn.Linear` or transformers' `Conv1D` base layer; not merged): their
    representation is that of the adapted layer, whose weight is the base weight plus each active adapter's
    `scaling * B @ A` (peft's `get_delta_weight`; rescaled per output by DoRA's magnitude), not that of the `lora_A` /
    `lora_B` factors."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft not installed: no LoRA layers
        return []
    from transformers.pytorch_utils import Conv1D

    layers = []
    for module in model.modules():
        if not isinstance(module, LoraLinear) or not isinstance(getattr(module, "base_layer", None), (nn.Linear, Conv1D)):
            continue
        if getattr(module, "merged", False):
            continue
        layers.append(module)
    return layers


def _effective_weight(layer: nn.Module, values: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
    """The weight a peft LoRA layer (`_lora_layers`) applies, in its base layer's layout, in float64: the base weight
    plus peft's `get_delta_weight` of each active adapter, `scaling * B @ A` (transposed for `fan_in_fan_out`),
    computed here in float64 (peft's is in the weights' dtype, and the metric subtracts two of them). A DoRA adapter
    adds `m / ||W0 + scaling * B @ A|| * (W0 + scaling * B @ A) - W0` instead (`m` its magnitude vector, the norm per
    output, as peft's `DoraLinearLayer.forward`). `values` (parameter id -> tensor, e.g. the copies taken before a
    step) replaces the parameters it holds, so the weight before a step is rebuilt from the copies of the (small)
    trainable factors instead of being kept as a dense float64 matrix per layer."""

    def value(p: torch.Tensor) -> torch.Tensor:
        return _full((values.get(id(p), p) if values is not None else p).detach()).double()

    weight = value(layer.base_layer.weight)
    if getattr(layer, "disable_adapters", False):
        return weight
    transposed = getattr(layer, "fan_in_fan_out", False)
    base = weight.t() if transposed else weight  # (out, in)
    total = base
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            a = value(layer.lora_A[adapter].weight)
            b = value(layer.lora_B[adapter].weight)
            delta = (b @ a) * layer.scaling[adapter]
            if getattr(layer, "use_dora", {}).get(adapter, False):
                # DoRA: the adapted weight rescaled per output to the magnitude `m` (the base output included)
                adapted = base + delta
                magnitude = value(layer.lora_magnitude_vector[adapter].weight)
                delta = (magnitude / torch.linalg.vector_norm(adapted, dim=1)).unsqueeze(1) * adapted - base
            total = total + delta
    return total.t() if transposed else total


def _unwrap_optimizer(optimizer):
    # accelerate's AcceleratedOptimizer (itself an Optimizer) keeps the real one in `.optimizer`
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _momentum(optimizer, p: torch.Tensor) -> torch.Tensor | None:
    if hasattr(optimizer, "momentum_buffer"):
        return optimizer.momentum_buffer(p)
    st = optimizer.state.get(p, {})
    for key in ("exp_avg", "momentum_buffer"):
        if key in st and isinstance(st[key], torch.Tensor):
            return st[key]
    return None


class UpdateMetricsCallback(TrainerCallback):
    """Measure how large each optimizer update is, in four ways, and log and plot the result (with the optimizer's
    SNR estimate where it makes one).

    Every `every_n_steps` optimizer steps, right before the step it records the weights, the gradient-momentum cosine
    (gradient after clipping vs. the optimizer's first-moment buffer *before* it absorbs this gradient) and the inputs
    of every linear layer on a fixed probe batch; right after the step it computes:

    - `update/relative_l2`: mean over weight tensors (2+ dims) of the per-tensor relative update
      `||Delta w_k|| / ||w_k||`, and `update/relative_l2_max` its maximum (with `log_per_tensor=True` also
      `update/relative_l2/<name>` for every tensor);
    - `update/l2_norm`: the global absolute `||Delta w||_2` over all trainable parameters;
    - `update/angle`: mean per-neuron angle (radians) over weight-decayed tensors with 2+ dims (`Conv1D` columns,
      a transposed convolution's output channels);
    - `update/rrc`: mean over linear layers of `||X dW^T|| / ||X W^T||` on the probe batch (if one is given); a peft
      LoRA layer counts as one layer whose `W` is its effective weight (base + `scaling * B @ A` of the active
      adapters), not as its `lora_A` / `lora_B` factors (whose zero-initialised B made the early values ~20x the
      layer's change);
    - `update/grad_momentum_cos`;
    - `update/snr`: with an optimizer that estimates the gradient signal-to-noise ratio (LionA / LionAR with
      `snr_correction=True`), the median over the tensors the step updated of the estimate it just used (0 at a
      tensor's first step, where one gradient says nothing about the noise; absent for other optimizers).

    The values go to `state.log_history` (so they are saved in `trainer_state.json` with each checkpoint), to
    `self.history`, and into the next `on_log` dict. At the end of training a PNG is written if `plot_path` is set
    (relative paths are placed in `args.output_dir`).

    Args:
        probe_batch (`Mapping[str, torch.Tensor]`, *optional*): fixed model inputs for the RRC (e.g. 4 blocks).
        every_n_steps (`int`, *optional*, defaults to 1): measurement period.
        plot_path (`str`, *optional*, defaults to `"update_metrics.png"`): PNG written at train end (None: no plot).
        log_per_tensor (`bool`, *optional*, defaults to `False`): also log each tensor's relative update.
    """

    def __init__(
        self,
        probe_batch: Mapping[str, torch.Tensor] | None = None,
        every_n_steps: int = 1,
        plot_path: str | None = "update_metrics.png",
        log_per_tensor: bool = False,
    ):
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be a positive int, got {every_n_steps!r}.")
        if probe_batch is not None and not isinstance(probe_batch, Mapping):
            raise TypeError("`probe_batch` must be a dict of model inputs (e.g. {'input_ids': tensor}).")
        self.probe_batch = probe_batch
        self.every_n_steps = every_n_steps
        self.plot_path = plot_path
        self.log_per_tensor = log_per_tensor
        self.history: list[dict] = []
        self._pending: dict | None = None
        self._snap: dict | None = None

    # -- helpers --------------------------------------------------------------------------------------------------
    @staticmethod
    def _tracked(model: nn.Module):
        from transformers.pytorch_utils import Conv1D
        from transformers.trainer_pt_utils import get_parameter_names

        from .normalized import _NORM_NAME_PATTERNS, transposed_parameter_ids

        decay = set(get_parameter_names(model, [nn.LayerNorm], _NORM_NAME_PATTERNS))
        # the neuron layout the rotational optimizers use: HF Conv1D columns and the output channels `weight[:, j]`
        # of transposed convolutions (measured per input channel, a LionAR step's angle read 0.0062-0.0072 rad
        # for an exact 0.00665)
        transposed = transposed_parameter_ids(model)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        angular = [(n, p, 1 if id(p) in transposed else 0) for n, p in params if n in decay and p.dim() >= 2]
        # a peft LoRA layer is one linear layer (its effective weight); its factors and frozen base are not
        lora = _lora_layers(model)
        inside = {id(sub) for layer in lora for sub in layer.modules() if sub is not layer}
        linears = [m for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)) and id(m) not in inside]
        return params, angular, linears + lora

    def _probe_inputs(self, model: nn.Module, linears: list[nn.Module]) -> dict:
        cache: dict[int, torch.Tensor] = {}

        def hook(module, args):
            cache[id(module)] = args[0].detach().clone()

        handles = [m.register_forward_pre_hook(hook) for m in linears]
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.probe_batch.items()}
            with torch.no_grad():
                model(**batch)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
            _reshard(model)
        return cache

    @staticmethod
    def _is_metrics_row(row: Mapping) -> bool:
        """Whether a `log_history` entry is one of this callback's rows (only `update/...` keys and `step`)."""
        keys = set(row) - {"step"}
        return bool(keys) and all(isinstance(k, str) and k.startswith("update/") for k in keys)

    # -- callback hooks -------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        # `state` is the checkpoint's on resume: take the rows measured before it back, so `history` and the plot
        # cover the whole run, and the row still waiting for the next log line (as in an uninterrupted run)
        self.history, self._pending, self._snap = [], None, None
        for row in state.log_history:
            if self._is_metrics_row(row):
                self.history.append(dict(row))
                self._pending = dict(row)
            else:
                self._pending = None

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or (state.global_step + 1) % self.every_n_steps:
            return
        params, angular, linears = self._tracked(model)
        opt = _unwrap_optimizer(optimizer) if optimizer is not None else None
        grads, moms = [], []
        if opt is not None:
            for _, p in params:
                m = _momentum(opt, p)
                if p.grad is not None and m is not None:
                    grads.append(p.grad)
                    moms.append(m)
        self._snap = {
            "weights": {id(p): p.detach().clone() for _, p in params},
            # the step count before this step of each tensor with an SNR estimate: `update/snr` averages the tensors
            # this step updated (one without a gradient, a layer LayerDrop skipped, or a step the AMP grad scaler
            # skipped keeps an older estimate that scaled no step now)
            "snr_steps": {
                id(p): opt.state[p].get("step") for _, p in params if opt is not None and "snr" in opt.state.get(p, {})
            },
            "cos": gradient_momentum_cosine(grads, moms) if grads else float("nan"),
            "inputs": self._probe_inputs(model, linears) if self.probe_batch is not None else {},
        }

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self._snap is None or model is None:
            return
        from transformers.pytorch_utils import Conv1D

        snap, self._snap = self._snap, None
        params, angular, linears = self._tracked(model)
        old = snap["weights"]
        l2 = l2_update_norm([old[id(p)] for _, p in params], [p for _, p in params])
        rel = relative_update_norms({n: old[id(p)] for n, p in params}, {n: p for n, p in params})
        angles = [angular_update(old[id(p)], p, nd) for _, p, nd in angular]
        # neurons and layers without a direction or a representation before the step (NaN: zero rows, peft's lora_B
        # at its start) have no relative change and are left out, as `relative_update_norms` leaves zero tensors out
        angle = float(torch.cat(angles).nanmean()) if angles else float("nan")
        rrcs = [
            relative_representation_change(
                snap["inputs"][id(m)], old[id(m.weight)], m.weight, transposed=isinstance(m, Conv1D)
            )
            for m in linears
            if id(m) in snap["inputs"] and not hasattr(m, "base_layer") and id(m.weight) in old
        ]
        # peft LoRA layers: the change of the adapted layer's output (base + scaling * B @ A), where any of its
        # weights trains
        rrcs += [
            relative_representation_change(
                snap["inputs"][id(m)],
                _effective_weight(m, old),  # rebuilt from the copies of its trainable weights
                _effective_weight(m),
                transposed=isinstance(m.base_layer, Conv1D),
            )
            for m in linears
            if id(m) in snap["inputs"] and hasattr(m, "base_layer") and any(id(p) in old for p in m.parameters())
        ]
        rrcs = [r for r in rrcs if not math.isnan(r)]
        rrc = sum(rrcs) / len(rrcs) if rrcs else float("nan")
        row = {
            "update/relative_l2": sum(rel.values()) / len(rel) if rel else float("nan"),
            "update/relative_l2_max": max(rel.values()) if rel else float("nan"),
            "update/l2_norm": l2,
            "update/angle": angle,
            "update/rrc": rrc,
            "update/grad_momentum_cos": snap["cos"],
            "step": state.global_step + 1,
        }
        # the SNR estimate of an optimizer that makes one (LionA / LionAR with `snr_correction=True`: the per-tensor
        # `state["snr"]` of the step just taken, whose 1/sqrt(1 + SNR) scaled it), over the tensors this step updated
        # (their step count moved)
        opt = _unwrap_optimizer(optimizer) if optimizer is not None else None
        before = snap["snr_steps"]
        snrs = [
            float(opt.state[p]["snr"])
            for _, p in params
            if opt is not None and "snr" in opt.state.get(p, {}) and opt.state[p].get("step") != before.get(id(p))
        ]
        if snrs:
            # the median: a tensor whose noise estimate is ~0 has an SNR of 1e20 or more (its step is scaled to ~0),
            # which a mean over tensors would report as the run's SNR
            # (NaN where any estimate is: `median` sorts, and NaN compares false, so the median hid it)
            row["update/snr"] = float("nan") if any(math.isnan(x) for x in snrs) else statistics.median(snrs)
        if self.log_per_tensor:
            row.update({f"update/relative_l2/{n}": v for n, v in rel.items()})
        self.history.append(row)
        state.log_history.append(dict(row))
        self._pending = row

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self._pending is not None:
            logs.update({k: v for k, v in self._pending.items() if k != "step"})
            self._pending = None

    def on_train_end(self, args, state, control, **kwargs):
        if self.plot_path and self.history and state.is_world_process_zero:
            path = self.plot_path if os.path.isabs(self.plot_path) else os.path.join(args.output_dir, self.plot_path)
            plot_update_metrics({"run": self.history}, path)


def plot_update_metrics(histories: Mapping[str, list[dict]], path: str) -> str:
    """Plot the four update metrics against the step for one or several runs; returns `path` (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not histories:
        raise ValueError("`histories` is empty; pass {run_name: UpdateMetricsCallback.history}.")
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    titles = [
        "relative update ||dW||/||W|| (mean over tensors)",
        "angular update (rad)",
        "relative representation change",
        "cos(grad, momentum)",
    ]
    for ax, key, title in zip(axes, METRIC_KEYS, titles):
        for name, rows in histories.items():
            xs = [r["step"] for r in rows if key in r]
            ys = [r[key] for r in rows if key in r]
            ax.plot(xs, ys, label=name, lw=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        if key != "update/grad_momentum_cos":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    from ..utils.io import atomic_savefig

    try:  # a killed or failed write leaves no truncated figure at `path` (or the previous one, unchanged)
        atomic_savefig(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return path
