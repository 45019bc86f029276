"""Activation kurtosis monitor: forward hooks at eight sites per transformer layer (seven inside it, and its output).

For each sample b of a batch, the tensor at a site is flattened and its non-central kurtosis
`K_b = mean(x_b^4) / mean(x_b^2)^2` computed (about 3 for Gaussian data; a few huge outliers make it large). The monitor
reports the mean over samples per site and layer, plus `rms`, `max_abs`, `underflow` (fraction of non-zero elements
that an E4M3 cast with the tensor's own per-tensor scale flushes to zero) and `saturation` (fraction of elements above
the amax this site had at the previous monitored step, i.e. what a delayed-scaling recipe would clip). Statistics stay
on the device until [`KurtosisMonitor.collect`] (one host transfer per monitored step).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from .emulation import E4M3, FP8_MAX, _in_backward

# site -> candidate (relative module path, "input" | "output") lists; the first list whose modules exist is used.
SITES: dict[str, list[list[tuple[str, str]]]] = {
    "activation": [[("", "output")]],
    "qkv_input": [[("self_attn.q_proj", "input")], [("self_attn.qkv_proj", "input")], [("attn.c_attn", "input")]],
    "qkv": [
        [("self_attn.q_proj", "output"), ("self_attn.k_proj", "output"), ("self_attn.v_proj", "output")],
        [("self_attn.qkv_proj", "output")],
        [("attn.c_attn", "output")],
    ],
    "q": [[("self_attn.q_norm", "output")], [("self_attn.q_proj", "output")]],
    "k": [[("self_attn.k_norm", "output")], [("self_attn.k_proj", "output")]],
    "mlp_intermediate": [
        [("mlp.gate_proj", "output"), ("mlp.up_proj", "output")],
        [("mlp.up_proj", "output")],
        [("mlp.fc1", "output")],
        [("mlp.c_fc", "output")],
    ],
    "mlp_post_act": [[("mlp.act_fn", "output")], [("mlp.act", "output")]],
    "mlp_out": [[("mlp.down_proj", "output")], [("mlp.fc2", "output")], [("mlp.c_proj", "output")]],
}
# An MLP whose output is its down projection's output rescaled (FOG's Smooth-SwiGLU multiplies it back by the
# per-token max |gate|) declares `rescales_output`; its `mlp_out` site is then the MLP output, as the reference tracker
# measures it after the rescale (the down projection's own output hides the outliers the rescale restores).
_RESCALED_MLP_OUT = [("mlp", "output")]
STATS = ("kurtosis", "rms", "max_abs", "underflow", "saturation")
# Under tensor parallelism (the Megatron split of transformers' plans) these sites hold this rank's heads / neurons
# only: outputs of a column-parallel projection (named here) or elementwise functions of them.
_TP_SHARDED_SITES = {
    "qkv": "self_attn.q_proj",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "mlp_intermediate": "mlp.up_proj",
    "mlp_post_act": "mlp.up_proj",
}
# smallest E4M3 subnormal is 2**-9; values below half of it round to zero
_E4M3_ZERO = 2.0**-10


def kurtosis(x: torch.Tensor, per_sample: bool = True) -> torch.Tensor:
    """Non-central kurtosis `mean(x^4) / mean(x^2)^2`, per sample (over all but the first dim) or over the tensor.

    Args:
        x (`torch.Tensor`): Any tensor; with `per_sample=True` the first dimension indexes samples.
        per_sample (`bool`): Return one value per sample (shape `(B,)`) instead of a scalar.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"kurtosis: x must be a torch.Tensor, got {type(x).__name__}.")
    if x.numel() == 0:
        raise ValueError("kurtosis: x is empty.")
    if per_sample and x.dim() == 0:
        raise ValueError(
            "kurtosis: a 0-d x has no sample dimension for per_sample=True; pass per_sample=False, or x with its "
            "samples along the first dimension."
        )
    flat = x.detach().reshape(x.shape[0], -1) if per_sample else x.detach().reshape(1, -1)
    x2 = flat.float().square()
    m2 = x2.sum(1, dtype=torch.float64) / flat.shape[1]
    m4 = x2.square().sum(1, dtype=torch.float64) / flat.shape[1]
    k = m4 / m2.square().clamp_min(1e-300)
    return k if per_sample else k[0]


def find_decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a model.

    A transformers model declares its block classes in `_no_split_modules`: the longest `nn.ModuleList` whose modules
    are all of those classes is the block list (so the 8 experts of a 2-block mixture-of-experts model are not taken
    for its blocks). Without such a declaration (or no list of those classes): the longest `nn.ModuleList` of
    identical module types, the outermost (first in `model.modules()` order) on a tie, else the base model's `layers`
    list (blocks of several types, e.g. a layer-paired model's layers and pairs)."""
    block_classes = {
        name
        for module in model.modules()
        for name in (getattr(type(module), "_no_split_modules", None) or ())
        if isinstance(name, str)
    }
    best: list[nn.Module] = []
    if block_classes:
        for module in model.modules():
            if (
                isinstance(module, nn.ModuleList)
                and len(module) > len(best)
                and {type(m).__name__ for m in module} <= block_classes
            ):
                best = list(module)
    if not best:
        for module in model.modules():
            if isinstance(module, nn.ModuleList) and len(module) > len(best):
                if len({type(m) for m in module}) == 1:
                    best = list(module)
    if not best:
        layers = getattr(getattr(model, "base_model", model), "layers", None)
        if isinstance(layers, nn.ModuleList):
            best = list(layers)
    if not best:
        raise ValueError("find_decoder_layers: the model has no nn.ModuleList of blocks to monitor.")
    return best


class KurtosisMonitor:
    """Forward hooks that measure per-sample kurtosis (and rms, max |x|, FP8 underflow / saturation) at up to seven
    sites of every layer: `activation` (block output), `qkv_input`, `qkv`, `q`, `k` (after QK norm when present),
    `mlp_intermediate` (FC1 output), `mlp_post_act`, `mlp_out`.

    Hooks only compute while the monitor is enabled ([`enable`] / [`disable`], or the `active` context); then they
    accumulate on the device and [`collect`] returns `{"<site>/<stat>/layer_<i>": float, "<site>/<stat>/avg": float}`.

    Args:
        model (`nn.Module`): A transformers causal LM (Llama-like module names) or any model whose blocks follow one of
            the layouts in `SITES`.
        sites (`list[str]`, *optional*): Subset of sites; default all that the model has.
        layers (`list[nn.Module]`, *optional*): The blocks; default [`find_decoder_layers`], looked up again at every
            [`enable`].
        process_group (*optional*): `torch.distributed` group whose ranks' statistics [`collect`] pools (default:
            the whole world when `torch.distributed` is initialised). Every rank must call [`collect`] together.

    Under transformers' tensor parallelism (a model loaded with `DistributedConfig(tp_size=N)`) the sites `qkv`, `q`,
    `k`, `mlp_intermediate` and `mlp_post_act` hold each rank's heads / neurons only; their per-sample sums, amax and
    counts are all-reduced over the tensor-parallel group before any ratio, so the statistics are those of the whole
    tensor (as the unsharded model measures them). Every rank of the group then runs the same monitored forwards.

    The sites are chosen at construction (an unknown or absent site is an error then); the hooks are (re)installed
    on the modules present when monitoring starts ([`enable`]), so converting the model afterwards is fine, and a site
    that has disappeared by then raises `RuntimeError`.
    """

    def __init__(
        self,
        model: nn.Module,
        sites: list[str] | None = None,
        layers: list[nn.Module] | None = None,
        process_group=None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"KurtosisMonitor: model must be a torch.nn.Module, got {type(model).__name__}.")
        if layers is not None and (
            not isinstance(layers, (list, tuple, nn.ModuleList, nn.Sequential))
            or not all(isinstance(layer, nn.Module) for layer in layers)
        ):
            raise TypeError(
                "KurtosisMonitor: layers must be a list of the model's blocks (torch.nn.Module), e.g. "
                f"layers=list(model.model.layers), got {layers!r:.80}."
            )
        if isinstance(sites, str):
            raise ValueError(f"KurtosisMonitor: sites must be a list of site names, e.g. sites=[{sites!r}].")
        if sites is not None:
            if not isinstance(sites, (list, tuple, set, frozenset)) or not all(isinstance(s, str) for s in sites):
                raise ValueError(
                    f"KurtosisMonitor: sites must be a list of site names (from {sorted(SITES)}), got {sites!r:.80}."
                )
            unknown = sorted(set(sites) - set(SITES))
            if unknown:
                raise ValueError(f"KurtosisMonitor: unknown sites {unknown}; choose from {sorted(SITES)}.")
        self.model = model
        self._explicit_layers = layers
        self.layers = layers if layers is not None else find_decoder_layers(model)
        self.requested_sites = list(sites) if sites is not None else list(SITES)
        self._sites_given = sites is not None
        self.process_group = process_group
        self.enabled = False
        self._handles: list = []
        self._hooked: dict[tuple, nn.Module] = {}
        self._pending: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._acc: dict[tuple[str, int], torch.Tensor] = {}
        self.prev_amax: dict[str, float] = {}
        self._prev_amax_t: dict[tuple[str, int], torch.Tensor] = {}
        # site -> one entry per layer: the module layout used there, or None where that layer lacks the site
        self.site_modules: dict[str, list[list[tuple[str, str]] | None]] = {}
        self._tp_groups: dict[tuple[str, int], object] = {}
        self._resolve_sites()

    # ---------------------------------------------------------------------------------------------------------- hooks
    def _resolve_sites(self) -> None:
        """Choose, per site and layer, the module layout present now (validates the requested sites)."""
        for li, layer in enumerate(self.layers):
            named = dict(layer.named_modules())
            for site in self.requested_sites:
                chosen = next((c for c in SITES[site] if all(p in named for p, _ in c)), None)
                if site == "mlp_out" and chosen is not None and getattr(named.get("mlp"), "rescales_output", False):
                    chosen = _RESCALED_MLP_OUT
                if chosen is not None:
                    self.site_modules.setdefault(site, [None] * len(self.layers))[li] = chosen
        if not self.site_modules:
            raise ValueError("KurtosisMonitor: none of the requested sites exist in this model's blocks.")
        absent = [s for s in self.requested_sites if s not in self.site_modules]
        if self._sites_given and absent:  # by default the monitor takes the sites the model has
            raise ValueError(
                f"KurtosisMonitor: sites {absent} exist in none of this model's blocks (it has {self.sites}); remove "
                "them from sites (a fused QKV projection is the `qkv` site, not `q`/`k`) or leave sites unset."
            )

    def _current_targets(self) -> dict[tuple, nn.Module]:
        """The modules that carry each site now: `{(layer, site, path, where): module}`; raises if one is gone."""
        layers = self._explicit_layers if self._explicit_layers is not None else find_decoder_layers(self.model)
        if len(layers) != len(self.layers):
            raise RuntimeError(
                f"KurtosisMonitor: the model now has {len(layers)} blocks, {len(self.layers)} when the monitor was "
                "built; build a new KurtosisMonitor for the changed model."
            )
        self.layers = layers
        targets: dict[tuple, nn.Module] = {}
        for li, layer in enumerate(layers):
            named = dict(layer.named_modules())
            targets[(li, "activation", "", "layer")] = layer
            for site, per_layer in self.site_modules.items():
                if site == "activation" or per_layer[li] is None:
                    continue
                for path, where in per_layer[li]:
                    if path not in named:
                        raise RuntimeError(
                            f"KurtosisMonitor: site {site!r} of layer {li} ({path!r}) no longer exists in the model "
                            "(a conversion removed or renamed it); build a new KurtosisMonitor for the changed model."
                        )
                    targets[(li, site, path, where)] = named[path]
        return targets

    def _attach(self) -> None:
        """(Re)install hooks on the modules present now; a no-op when they are the ones already hooked."""
        targets = self._current_targets()
        if targets.keys() == self._hooked.keys() and all(targets[k] is self._hooked[k] for k in targets):
            return
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._tp_groups = self._tensor_parallel_groups()
        for (li, site, _path, where), mod in targets.items():
            if where == "layer":
                self._handles.append(mod.register_forward_hook(self._make_layer_end_hook(li)))
            elif where == "input":
                self._handles.append(mod.register_forward_pre_hook(self._make_hook(site, li, "input")))
            else:
                self._handles.append(mod.register_forward_hook(self._make_hook(site, li, "output")))
        self._hooked = targets

    def _tensor_parallel_groups(self) -> dict[tuple[str, int], object]:
        """`{(site, layer): process group}` for the sites whose tensors transformers' tensor parallelism splits over
        ranks: the producing projection is hooked by it and its weight is split on the output dim. (FSDP2 also
        shards dim 0, but gathers the full weight before the forward and installs no tensor-parallel hooks.)"""
        from torch.distributed.tensor import DTensor

        groups = {}
        for li, layer in enumerate(self.layers):
            named = dict(layer.named_modules())
            if any(
                getattr(m, "_lp_block_pair_part", None) and getattr(m, "_is_hooked", False) for m in named.values()
            ):
                raise RuntimeError(
                    "KurtosisMonitor: layer-paired 'block' pairs under tensor parallelism keep one branch per rank and "
                    "sum them later (their MLP output is a partial sum when hooked), which the monitor does not "
                    "reduce; monitor the model without tensor parallelism."
                )
            for site, producer in _TP_SHARDED_SITES.items():
                module = named.get(producer)
                weight = getattr(module, "weight", None)
                if site not in self.site_modules or not getattr(module, "_is_hooked", False):
                    continue
                if isinstance(weight, DTensor):
                    for mesh_dim, placement in enumerate(weight.placements):
                        if placement.is_shard() and placement.dim in (0, -2):
                            groups[(site, li)] = weight.device_mesh.get_group(mesh_dim)
        return groups

    @property
    def sites(self) -> list[str]:
        """Sites found in the model."""
        return [s for s in SITES if s in self.site_modules]

    def _make_hook(self, site: str, layer: int, where: str):
        def hook(module, args, output=None):
            if not self.enabled or _in_backward():  # a forward recomputed by activation checkpointing: seen already
                return
            x = args[0] if where == "input" else output
            if isinstance(x, tuple):
                x = x[0]
            self._observe(site, layer, x)

        return hook

    def _make_layer_end_hook(self, layer: int):
        def hook(module, args, output):
            if not self.enabled or _in_backward():
                return
            x = output[0] if isinstance(output, tuple) else output
            if "activation" in self.site_modules:
                self._observe("activation", layer, x)
            self._finalize(layer)

        return hook

    def _observe(self, site: str, layer: int, x: torch.Tensor) -> None:
        group = self._tp_groups.get((site, layer))
        with torch.no_grad():
            flat = x.detach().reshape(x.shape[0], -1)
            x2 = flat.float().square()
            absx = flat.abs().float()
            amax = absx.amax()
            if group is not None:  # the per-tensor FP8 scale of the whole (sharded) tensor
                torch.distributed.all_reduce(amax, op=torch.distributed.ReduceOp.MAX, group=group)
            scale = FP8_MAX[E4M3] / amax.clamp_min(1e-30)
            nonzero = absx > 0
            under = (nonzero & (absx * scale <= _E4M3_ZERO)).sum(dtype=torch.float64)  # ties round to 0
            ref = self._prev_amax_t.get((site, layer))
            sat = (absx > ref).sum(dtype=torch.float64) if ref is not None else under.new_zeros(())
            stats = torch.stack(
                [
                    x2.sum(1, dtype=torch.float64),  # per-sample sum x^2 ...
                    x2.square().sum(1, dtype=torch.float64),  # ... sum x^4
                    torch.full((flat.shape[0],), float(flat.shape[1]), dtype=torch.float64, device=x.device),
                ]
            )  # (3, B)
            numel = torch.tensor(float(flat.numel()), dtype=torch.float64, device=x.device)
            counts = torch.stack([under, sat, numel, nonzero.sum(dtype=torch.float64)])
            if group is not None:  # sums over this rank's part -> sums over the whole tensor, before any ratio
                sums = torch.cat([stats.flatten(), counts])
                torch.distributed.all_reduce(sums, group=group)
                stats, counts = sums[: stats.numel()].view_as(stats), sums[stats.numel() :]
            extra = torch.cat([amax.double().view(1), counts])
        self._pending.setdefault((site, layer), []).append((stats, extra))

    def _finalize(self, layer: int) -> None:
        for key in [k for k in self._pending if k[1] == layer]:
            parts = self._pending.pop(key)
            stats = sum(p[0] for p in parts)  # sums over modules of a site (q, k, v outputs) per sample
            extra = torch.stack([p[1] for p in parts])
            s2, s4, n = stats
            k = (s4 / n) / (s2 / n).square().clamp_min(1e-300)
            rms = (s2 / n).sqrt()
            row = torch.stack(
                [
                    k.sum(),
                    rms.sum(),
                    extra[:, 0].max(),
                    extra[:, 1].sum(),
                    extra[:, 2].sum(),
                    extra[:, 3].sum(),
                    torch.tensor(float(k.numel()), dtype=torch.float64, device=k.device),
                    extra[:, 4].sum(),  # non-zero elements (the underflow fraction's denominator)
                ]
            )
            prev = self._acc.get(key)
            if prev is None:
                self._acc[key] = row
            else:
                merged = prev + row
                merged[2] = torch.maximum(prev[2], row[2])
                self._acc[key] = merged

    # ------------------------------------------------------------------------------------------------------- control
    def enable(self) -> None:
        """Start measuring (hooks compute from the next forward). The site modules are looked up again now, so a
        monitor built before `convert` (or any module swap) follows the new modules; a site that disappeared raises
        `RuntimeError` instead of going silently unmeasured."""
        self._attach()
        self.enabled = True

    def disable(self) -> None:
        """Stop measuring (hooks return immediately)."""
        self.enabled = False

    def reset(self) -> None:
        """Drop accumulated, not yet collected statistics."""
        self._acc.clear()
        self._pending.clear()

    def has_data(self) -> bool:
        return bool(self._acc)

    def collect(self) -> dict[str, float]:
        """Return and reset the statistics accumulated since the last call (means over samples and forwards).

        Returns:
            `dict[str, float]`: keys `"<site>/<stat>/layer_<i>"` and `"<site>/<stat>/avg"` (mean over layers; `max_abs`
            is the max over layers).
        """
        if not self._acc:
            return {}
        keys = sorted(self._acc)
        stacked = self._reduce_across_ranks(torch.stack([self._acc[k] for k in keys]), keys)
        table = stacked.cpu().tolist()  # the only host sync
        for i, key in enumerate(keys):
            self._prev_amax_t[key] = stacked[i, 2].to(torch.float32).detach().clone()
        self._acc.clear()
        out: dict[str, float] = {}
        per_site: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for (site, layer), (k_sum, rms_sum, amax, under, sat, numel, n, nonzero) in zip(keys, table):
            values = {
                "kurtosis": k_sum / n,
                "rms": rms_sum / n,
                "max_abs": amax,
                "underflow": under / nonzero if nonzero else 0.0,
                "saturation": sat / numel,
            }
            for stat, v in values.items():
                out[f"{site}/{stat}/layer_{layer}"] = v
                per_site[site][stat].append(v)
            self.prev_amax[f"{site}/{layer}"] = amax
        for site, stats in per_site.items():
            for stat, vals in stats.items():
                out[f"{site}/{stat}/avg"] = max(vals) if stat == "max_abs" else sum(vals) / len(vals)
        return out

    def _reduce_across_ranks(self, table: torch.Tensor, keys: list) -> torch.Tensor:
        """Under `torch.distributed` (DDP / FSDP data parallelism), pool the per-(site, layer) sums of every rank
        (max for the amax column), so that every rank sees the same statistics and acts on them together. The ranks
        must hold the same sorted `keys` (checked by their count and a CRC-32 of their names: equal counts of
        different rows would otherwise be summed row by row)."""
        import zlib

        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(self.process_group) == 1:
            return table
        n, crc = float(table.shape[0]), float(zlib.crc32(repr(list(keys)).encode()))  # both exact in float64
        rows = torch.tensor([n, -n, crc, -crc], dtype=torch.float64, device=table.device)
        dist.all_reduce(rows, op=dist.ReduceOp.MAX, group=self.process_group)
        if rows[0] != -rows[1] or rows[2] != -rows[3]:
            raise RuntimeError(
                "KurtosisMonitor: ranks measured different (site, layer) sets this step; every rank must run the same "
                "monitored forwards (enable/disable the monitor on all ranks at the same steps)."
            )
        sums = table.clone()
        sums[:, 2] = 0.0
        amax = table[:, 2].clone()
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=self.process_group)
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=self.process_group)
        sums[:, 2] = amax
        return sums

    def active(self):
        """Context manager enabling the monitor for the enclosed forwards."""
        monitor = self

        class _Ctx:
            def __enter__(self):
                monitor.enable()
                return monitor

            def __exit__(self, *exc):
                monitor.disable()
                return False

        return _Ctx()

    def state_dict(self) -> dict:
        """JSON-serialisable state (previous amax per site and layer, for the saturation statistic)."""
        return {"prev_amax": dict(self.prev_amax)}

    def load_state_dict(self, state: dict) -> None:
        self.prev_amax = {k: float(v) for k, v in state.get("prev_amax", {}).items()}
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self._prev_amax_t = {
            (key.rsplit("/", 1)[0], int(key.rsplit("/", 1)[1])): torch.tensor(v, device=device)
            for key, v in self.prev_amax.items()
        }

    def remove(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._hooked = {}
        self.enabled = False
