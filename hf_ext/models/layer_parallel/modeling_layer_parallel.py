"""Layer-paired ("layer parallel") causal LM for Llama-family decoder blocks, and the converter that builds it.

Sequential layers are the source architecture's own decoder layers. A merged pair in "sublayer" mode is the same
decoder layer made twice as wide (gains folded into the projections, heads and MLP neurons concatenated), so it runs
through transformers' own attention kernels and caches. Unmerged pairs run the two source layers as branches.
"""

import contextlib
import copy
import importlib
import warnings
import weakref

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES, TensorParallelLayer
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_layer_parallel import (
    LP_MLP_NORMS,
    LP_MODES,
    SUPPORTED_SOURCE_MODEL_TYPES,
    LayerParallelConfig,
    _is_bool,
)

_CLASS_PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}
_MASK_FUNCTIONS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


def _all_source_classes(suffix: str) -> tuple[type, ...]:
    """`<Prefix><suffix>` classes of every supported source architecture (e.g. all `...Attention` classes)."""
    out = []
    for model_type, prefix in _CLASS_PREFIX.items():
        module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        out.append(getattr(module, f"{prefix}{suffix}"))
    return tuple(out)


def source_classes(model_type: str) -> tuple[type, type, type]:
    """(decoder layer, RMSNorm, rotary embedding) classes of a supported source architecture."""
    if model_type not in _CLASS_PREFIX:
        raise ValueError(
            f"model_type {model_type!r} is not supported; use one of {list(SUPPORTED_SOURCE_MODEL_TYPES)}."
        )
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    prefix = _CLASS_PREFIX[model_type]
    return (
        getattr(module, f"{prefix}DecoderLayer"),
        getattr(module, f"{prefix}RMSNorm"),
        getattr(module, f"{prefix}RotaryEmbedding"),
    )


def _branch_linears(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.ModuleList:
    """One `nn.Linear` per branch holding a copy of that branch's slice of a `(branches, out, in)` weight and
    `(branches, out)` bias (same dtype, device and `requires_grad`)."""
    branches, out_features, in_features = weight.shape
    linears = nn.ModuleList()
    for b in range(branches):
        linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=weight.dtype)
        linear.weight = nn.Parameter(weight.detach()[b].clone(), requires_grad=weight.requires_grad)
        if bias is not None:
            linear.bias = nn.Parameter(bias.detach()[b].clone(), requires_grad=bias.requires_grad)
        linears.append(linear)
    return linears


def _run_branch_linears(linears: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """`[..., branches, in]` -> `[..., branches, out]`, branch `b` through `linears[b]` (each branch's input made
    contiguous: GEMM kernels such as Transformer Engine's want a dense `[tokens, in]` matrix)."""
    per_branch = x.movedim(-2, 0).contiguous()
    return torch.stack([linear(per_branch[b]) for b, linear in enumerate(linears)], dim=-2)


#: The stacked parameters that each module's `split_branches` replaced, `{module: {group: {name: weakref}}}`: weak, so a
#: replaced parameter stays only while something else holds it (an optimizer built before the split), which
#: `replaced_stacked_parameters` reports. Kept beside the modules, not on them, so the model still pickles.
_REPLACED_BY_SPLIT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _SplittableBranches:
    """Branch-wise modules whose stacked `(branches, out, in)` weights can be split into one `nn.Linear` per branch
    (`split_branches`), which any `nn.Linear` converter (`hf_ext.fp8.convert`: torchao's `Float8Linear`, the emulated
    `Fp8Linear`, Transformer Engine) can then replace. The split module computes the same function (to rounding) and
    its `state_dict` keeps the stacked layout and names (`...o_proj.weight`, `...mlp.gate_weight`), so checkpoints
    stay those of the plain model and load into either form.

    `_BRANCH_GROUPS` maps each group (the `nn.ModuleList` attribute made by the split) to its stacked weight and bias
    parameter names."""

    _BRANCH_GROUPS: dict[str, tuple[str, str]] = {}

    def branch_linear_shapes(self) -> dict[str, tuple[int, int, int]]:
        """`{group: (branches, in_features, out_features)}` of the groups not split yet."""
        shapes = {}
        for group, (weight_name, _) in self._BRANCH_GROUPS.items():
            weight = getattr(self, weight_name)
            if weight is not None:
                branches, out_features, in_features = weight.shape
                shapes[group] = (branches, in_features, out_features)
        return shapes

    def split_branches(self, groups=None) -> list[str]:
        """Replace the stacked weights of `groups` (default: all not split yet) by one `nn.Linear` per branch, in
        `self.<group>[b]`; returns the new linears' names relative to this module. Parameters that held the stacked
        weights are new objects afterwards (build optimizers after splitting)."""
        groups = list(self.branch_linear_shapes()) if groups is None else list(groups)
        names = []
        for group in groups:
            weight_name, bias_name = self._BRANCH_GROUPS[group]
            weight, bias = getattr(self, weight_name), getattr(self, bias_name)
            if weight is None:
                raise ValueError(f"{type(self).__name__}: {group!r} is already split into per-branch linears.")
            if isinstance(weight, DTensor):
                raise ValueError(
                    f"{type(self).__name__}: {weight_name} is sharded by tensor parallelism (one branch per rank); "
                    "only an unsharded module can be split into per-branch linears."
                )
            linears = _branch_linears(weight, bias)
            replaced = {
                attr: weakref.ref(p)
                for attr, p in ((weight_name, weight), (bias_name, bias))
                if isinstance(p, nn.Parameter)
            }
            _REPLACED_BY_SPLIT.setdefault(self, {})[group] = replaced
            for stacked in (weight_name, bias_name):
                if stacked in self._parameters:  # a bias built as `None` is a plain attribute, already None
                    self._parameters[stacked] = None
            self.add_module(group, linears)
            names += [f"{group}.{b}" for b in range(len(linears))]
        if names and not getattr(self, "_branch_state_hooks", False):
            self.register_state_dict_post_hook(_stack_branch_state)
            self.register_load_state_dict_pre_hook(_split_branch_state)
            self._branch_state_hooks = True
        return names

    def replaced_stacked_parameters(self) -> dict[str, dict[str, nn.Parameter]]:
        """`{group: {stacked parameter name: parameter}}` of the stacked weights and biases `split_branches` replaced
        that are still alive: something built before the split holds them (e.g. an optimizer, which would step them
        instead of the per-branch linears' new parameters)."""
        out = {}
        for group, refs in _REPLACED_BY_SPLIT.get(self, {}).items():
            alive = {attr: p for attr, p in ((attr, ref()) for attr, ref in refs.items()) if p is not None}
            if alive:
                out[group] = alive
        return out


def _branch_param(linear: nn.Module, attr: str) -> tuple[str, torch.Tensor | None] | None:
    """Where a per-branch linear holds its `attr` ("weight" / "bias"): `(key suffix, parameter)`, following peft's
    `base_layer` when an adapter wraps the linear (`("base_layer.weight", ...)`); `None` when it holds none."""
    path = ""
    while attr not in linear._parameters and isinstance(getattr(linear, "base_layer", None), nn.Module):
        linear, path = linear.base_layer, path + "base_layer."
    return (path + attr, linear._parameters[attr]) if attr in linear._parameters else None


def _stack_branch_state(module, state_dict, prefix, local_metadata) -> None:
    """State dict post-hook of a split branch-wise module: the per-branch linears' weights and biases are saved
    stacked under the module's original names (what the unsplit module and `from_pretrained` expect). A group whose
    branches are not all plain linears (a peft adapter wraps one: its weight is `<group>.<b>.base_layer.weight`)
    keeps its per-branch keys, which load back into the same wrapped layout."""
    for group, names in module._BRANCH_GROUPS.items():
        linears = module._modules.get(group)
        if linears is None:
            continue
        for attr, stacked_name in zip(("weight", "bias"), names):
            keys = [f"{prefix}{group}.{b}.{attr}" for b in range(len(linears))]
            if not all(key in state_dict for key in keys):
                continue
            values = [state_dict.pop(key) for key in keys]
            values = [getattr(v, "_tensor", v) for v in values]  # torchao's FP8 all-gather weight wrapper
            state_dict[prefix + stacked_name] = torch.stack([v.detach() for v in values])


def _stacked_value_everywhere(stacked, targets) -> bool:
    """Whether any rank holds the stacked value, for per-branch parameters that are DTensors (FSDP2) while this rank's
    value is a plain tensor or absent. A full state dict loaded with `broadcast_from_rank0` (accelerate's FSDP2
    FULL_STATE_DICT resume) holds it on rank 0 only: every rank must then take part in distributing it."""
    present = torch.tensor([0 if stacked is None else 1], device=targets[0].to_local().device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    return bool(present.item())


def _split_branch_state(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
    """Load-state-dict pre-hook of a split branch-wise module: stacked weights (a plain checkpoint, or this module's
    own `state_dict`) go to the per-branch linears, to `<group>.<b>.base_layer.<attr>` where a peft adapter wraps a
    branch. Per-branch parameters that are DTensors (FSDP2) get DTensor slices of the same mesh and placements: a full
    (unsharded) state dict is distributed, also when only rank 0 holds it (`broadcast_from_rank0`)."""
    for group, names in module._BRANCH_GROUPS.items():
        linears = module._modules.get(group)
        if linears is None:
            continue
        for attr, stacked_name in zip(("weight", "bias"), names):
            found = [_branch_param(linear, attr) for linear in linears]
            if any(f is None or f[1] is None for f in found):
                continue  # the branches hold no such parameter (no bias)
            targets = [param for _, param in found]
            stacked = state_dict.get(prefix + stacked_name)
            if stacked is not None and (stacked.dim() == 0 or stacked.shape[0] != len(linears)):
                stacked = None  # of another shape: the per-branch keys report it as missing
            distributed = (
                isinstance(targets[0], DTensor)
                and not isinstance(stacked, DTensor)
                and dist.is_available()
                and dist.is_initialized()
            )
            if distributed and not _stacked_value_everywhere(stacked, targets):
                continue
            if stacked is None and not distributed:
                continue
            state_dict.pop(prefix + stacked_name, None)
            for b, (suffix, target) in enumerate(found):
                if stacked is None:  # another rank holds it: receive this rank's shard
                    value = torch.empty(target.shape, dtype=target.dtype, device=target.to_local().device)
                else:
                    value = stacked[b]
                if isinstance(target, DTensor) and not isinstance(value, DTensor):
                    local = target.to_local()
                    value = distribute_tensor(
                        value.detach().to(device=local.device, dtype=target.dtype),
                        target.device_mesh,
                        target.placements,
                    )
                state_dict[f"{prefix}{group}.{b}.{suffix}"] = value


class BranchwiseLinear(_SplittableBranches, nn.Module):
    """`num_branches` independent linear maps applied to consecutive slices of the last dimension.

    Input `[..., num_branches * in_features]`, output `[..., num_branches, out_features]` (one batched matmul).
    `split_branches()` (done by `hf_ext.fp8.convert`) stores one `nn.Linear` per branch in `branches` instead of the
    stacked `weight` / `bias`, which then are `None`; the state dict keeps the stacked `weight` / `bias`.
    """

    _BRANCH_GROUPS = {"branches": ("weight", "bias")}

    def __init__(self, num_branches: int, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.num_branches, self.in_features, self.out_features = num_branches, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_branches, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(num_branches, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:  # split into per-branch linears
            return _run_branch_linears(self.branches, x.view(*x.shape[:-1], len(self.branches), -1))
        # Branch count and width come from the weight: under tensor parallelism it holds this rank's branches only.
        branches, _, in_features = self.weight.shape
        x = x.view(*x.shape[:-1], branches, in_features)
        out = torch.einsum("...bi,boi->...bo", x, self.weight)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"branches={self.num_branches}, in={self.in_features}, out={self.out_features}"


class BranchwiseGatedMLP(_SplittableBranches, nn.Module):
    """Gated MLPs of several branches, each reading its own input; their outputs are summed by one down projection.

    Input `[..., num_branches, hidden]`, output `[..., hidden]`. `split_branches()` (done by `hf_ext.fp8.convert`)
    stores one `nn.Linear` per branch in `gate_branches` / `up_branches` instead of the stacked `gate_weight` /
    `up_weight` (and biases), which then are `None`; the state dict keeps the stacked names.
    """

    _BRANCH_GROUPS = {"gate_branches": ("gate_weight", "gate_bias"), "up_branches": ("up_weight", "up_bias")}

    def __init__(
        self, num_branches: int, hidden_size: int, intermediate_size: int, act_fn, gate_up_bias: bool, down_bias
    ):
        super().__init__()
        self.num_branches, self.hidden_size, self.intermediate_size = num_branches, hidden_size, intermediate_size
        self.gate_weight = nn.Parameter(torch.empty(num_branches, intermediate_size, hidden_size))
        self.up_weight = nn.Parameter(torch.empty(num_branches, intermediate_size, hidden_size))
        self.gate_bias = nn.Parameter(torch.zeros(num_branches, intermediate_size)) if gate_up_bias else None
        self.up_bias = nn.Parameter(torch.zeros(num_branches, intermediate_size)) if gate_up_bias else None
        self.down_proj = nn.Linear(num_branches * intermediate_size, hidden_size, bias=down_bias)
        self.act_fn = act_fn

    def _project(self, x: torch.Tensor, group: str) -> torch.Tensor:
        weight_name, bias_name = self._BRANCH_GROUPS[group]
        weight, bias = getattr(self, weight_name), getattr(self, bias_name)
        if weight is None:  # split into per-branch linears
            return _run_branch_linears(getattr(self, group), x)
        out = torch.einsum("...bd,bid->...bi", x, weight)
        return out if bias is None else out + bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self._project(x, "gate_branches"), self._project(x, "up_branches")
        inner = self.act_fn(gate) * up
        return self.down_proj(inner.flatten(-2))  # this rank's branches only under tensor parallelism


def _widen_decoder_layer(layer: nn.Module, factor: int = 2) -> nn.Module:
    """Replace the projections of a stock decoder layer with `factor` times more heads and MLP neurons."""
    attn, mlp = layer.self_attn, layer.mlp

    def wide(lin: nn.Linear, out_mult: int, in_mult: int) -> nn.Linear:
        return nn.Linear(
            lin.in_features * in_mult, lin.out_features * out_mult, bias=lin.bias is not None, device=lin.weight.device
        )

    attn.q_proj, attn.k_proj, attn.v_proj = (wide(p, factor, 1) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    attn.o_proj = wide(attn.o_proj, 1, factor)
    mlp.gate_proj, mlp.up_proj = wide(mlp.gate_proj, factor, 1), wide(mlp.up_proj, factor, 1)
    mlp.down_proj = wide(mlp.down_proj, 1, factor)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = mlp.intermediate_size * factor
    return layer


class BranchStateTap(nn.Module):
    """Identity on `state`; exists so that `output_hidden_states` records the residual stream of an unmerged pair
    after its first branch (an unmerged pair owns two cache slots, so it reports two hidden states)."""

    def forward(self, block_input: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return state


class LayerParallelBranchPair(GradientCheckpointingLayer):
    """Two source decoder layers run as parallel branches whose outputs are summed (the unmerged reference path).

    "sublayer": `h = x + A_a(N1_a x) + A_b(N1_b x)`, `y = h + M_a(N2_a h) + M_b(N2_b h)`.
    "block": `y = x + f_a(x) + f_b(x)` with `f(x) = A(N1 x) + M(N2(x + A(N1 x)))`.
    Each branch keeps its own attention and KV-cache slot. With `output_hidden_states` the pair reports two states,
    one per slot: the residual stream with only branch a's last contribution added (`x + f_a(x)` in "block" mode,
    `h + M_a(N2_a h)` in "sublayer" mode), then the pair's output.
    """

    def __init__(self, layer_a: nn.Module, layer_b: nn.Module, mode: str, mlp_norm: str):
        super().__init__()
        self.branch_a, self.branch_b = layer_a, layer_b
        self.mode, self.mlp_norm = mode, mlp_norm
        self.first_branch_state = BranchStateTap()

    @staticmethod
    def _split_norm_mlp(mlp: nn.Module, norm_a: torch.Tensor, norm_b: torch.Tensor) -> torch.Tensor:
        """MLP whose first half of neurons reads `norm_a` and second half `norm_b` (reference TP split).

        The projections are called as modules (on both inputs, keeping each half), not through their weights, so
        whatever wraps them (a peft LoRA layer, another Linear implementation) takes part as in the source layer."""

        def proj(lin: nn.Module) -> torch.Tensor:
            first, second = lin(norm_a), lin(norm_b)
            half = first.shape[-1] // 2
            return torch.cat([first[..., :half], second[..., half:]], dim=-1)

        return mlp.down_proj(mlp.act_fn(proj(mlp.gate_proj)) * proj(mlp.up_proj))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        x, la, lb = hidden_states, self.branch_a, self.branch_b
        attn_kwargs = dict(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        attn_a = la.self_attn(hidden_states=la.input_layernorm(x), **attn_kwargs)[0]
        attn_b = lb.self_attn(hidden_states=lb.input_layernorm(x), **attn_kwargs)[0]
        if self.mode == "block":
            h_a, h_b = x + attn_a, x + attn_b
            mlp_a = la.mlp(la.post_attention_layernorm(h_a))
            mlp_b = lb.mlp(lb.post_attention_layernorm(h_b))
            first = self.first_branch_state(x, x + (attn_a + mlp_a))
            return first + (attn_b + mlp_b)
        h = x + attn_a + attn_b
        if self.mlp_norm == "official_tp_split":
            n_a, n_b = la.post_attention_layernorm(h), lb.post_attention_layernorm(h)
            mlp_a, mlp_b = self._split_norm_mlp(la.mlp, n_a, n_b), self._split_norm_mlp(lb.mlp, n_a, n_b)
        else:
            mlp_a, mlp_b = la.mlp(la.post_attention_layernorm(h)), lb.mlp(lb.post_attention_layernorm(h))
        return self.first_branch_state(x, h + mlp_a) + mlp_b


class BranchInput(nn.Module):
    """Identity on the residual stream where a block pair's branches read it. Under tensor parallelism each rank
    runs one branch, so the gradient reaching the stream through this point is partial and is summed over the ranks
    in the backward pass (the `layer_parallel_block` style)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


class BranchSum(nn.Module):
    """Identity on the sum of a block pair's branch outputs. Under tensor parallelism each rank holds its own
    branch's output, and this is where they are summed: the pair's single all-reduce."""

    def forward(self, branch_outputs: torch.Tensor) -> torch.Tensor:
        return branch_outputs


class LayerParallelMergedBlockPair(GradientCheckpointingLayer):
    """A "block"-mode pair stored as one layer: one wide attention (2x heads, one cache slot) whose output
    projection keeps the branches apart, then both gated MLPs as one batched matmul on their own inputs.

    `y = x + sum_b [A_b + M_b(N2(x + A_b))]`. At tensor-parallel size 2 each rank runs one whole branch (its heads,
    output projection and MLP) on the replicated `x`, and the pair needs a single all-reduce (`branch_sum`).
    """

    def __init__(self, attention: nn.Module, norm_cls: type, hidden_size: int, eps: float, mlp: BranchwiseGatedMLP):
        super().__init__()
        self.input_layernorm = norm_cls(hidden_size, eps=eps)
        self.self_attn = attention
        self.post_attention_layernorm = norm_cls(hidden_size, eps=eps)
        self.mlp = mlp
        self.branch_input = BranchInput()
        self.branch_sum = BranchSum()
        self.mark_tensor_parallel_parts()

    def mark_tensor_parallel_parts(self) -> None:
        """Tag the parts that `BlockPairTensorParallel` splits by branch. Several of them share their generic name
        ("layers.*.mlp.down_proj", ...) with modules of ordinary layers, which the style leaves to transformers' own.
        A tag, not a class check, so that a copy of this file loaded as remote code works with the same styles."""
        parts = {
            "attention_output": self.self_attn.o_proj,
            "post_attention_norm": self.post_attention_layernorm,
            "mlp": self.mlp,
            "down_proj": self.mlp.down_proj,
            "branch_input": self.branch_input,
            "branch_sum": self.branch_sum,
        }
        for part, module in parts.items():
            module._lp_block_pair_part = part

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        x = hidden_states
        attn, _ = self.self_attn(
            hidden_states=self.input_layernorm(x),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )  # [..., branches, hidden]: one output per branch
        h = self.branch_input(x).unsqueeze(-2) + attn
        return x + self.branch_sum(attn.sum(dim=-2) + self.mlp(self.post_attention_layernorm(h)))


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) forward, identity backward: where the per-rank branch outputs of a block pair are summed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _SumGradOverRanks(torch.autograd.Function):
    """Identity forward, all-reduce (sum) backward: a replicated input that each rank uses for its own branch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class BlockPairTensorParallel(TensorParallelLayer):
    """Tensor-parallel style for the parts of merged "block" pairs, registered with transformers' parallel styles.

    At tensor-parallel size 2 rank `r` runs branch `r` of every block pair whole: the colwise q/k/v split already
    gives it that branch's heads; here its output projection, gate/up weights and down-projection columns are
    sharded by branch and run on local tensors, the post-attention norm gain (replicated, but used by this rank's
    branch only) has its gradient summed over the ranks, `branch_input` sums the gradient that the branches send
    back to the residual stream, and `branch_sum` adds the branches' outputs: one all-reduce per pair, where a merged
    "sublayer" pair needs two and two unpaired layers four.

    Modules that are not part of a block pair (the same generic names in ordinary layers) get `fallback`, or nothing.
    """

    def __init__(self, fallback: TensorParallelLayer | None = None):
        self.fallback = fallback

    def shard_param(self, module, param, mesh):
        part = getattr(module, "_lp_block_pair_part", None)
        if part is None:
            return None if self.fallback is None else self.fallback.shard_param(module, param, mesh)
        meta = module._parameters.get(param)
        if meta is None or part == "post_attention_norm":
            return None  # the norm gain stays replicated
        if part == "down_proj" and param != "weight":
            raise ValueError(
                "Tensor parallelism of merged lp_mode='block' pairs does not support a bias on the MLP down "
                "projection (the source config's `mlp_bias`); convert with mode='sublayer' or with merge=False."
            )
        # (branches, ...) weights: one branch per rank; the down projection: its input columns, branch a's first.
        placement = Shard(1) if part == "down_proj" else Shard(0)
        module._parameters[param] = nn.Parameter(
            distribute_tensor(meta, mesh, [placement], src_data_rank=None), requires_grad=meta.requires_grad
        )
        return None

    def install_forward(self, module, mesh):
        part = getattr(module, "_lp_block_pair_part", None)
        if part is None:
            return module if self.fallback is None else self.fallback.install_forward(module, mesh)
        group = mesh.get_group()
        if part == "branch_input":

            def forward(hidden_states: torch.Tensor) -> torch.Tensor:
                if torch.is_grad_enabled() and hidden_states.requires_grad:
                    return _SumGradOverRanks.apply(hidden_states, group)
                return hidden_states

            module.forward = forward
            return module
        if part == "branch_sum":

            def forward(branch_outputs: torch.Tensor) -> torch.Tensor:
                if torch.is_grad_enabled() and branch_outputs.requires_grad:
                    return _SumOverRanks.apply(branch_outputs, group)
                dist.all_reduce(branch_outputs, group=group)
                return branch_outputs

            module.forward = forward
            return module
        if part == "post_attention_norm":  # replicated gain, used by this rank's branch only
            original_forward = module.forward

            def forward(*args, **kwargs):
                if not torch.is_grad_enabled():
                    return original_forward(*args, **kwargs)
                saved = {name: p for name, p in module.named_parameters(recurse=False) if p.requires_grad}
                for name, param in saved.items():  # each backward pass's gradient summed once, before accumulation
                    module._parameters[name] = _SumGradOverRanks.apply(param, group)
                try:
                    return original_forward(*args, **kwargs)
                finally:
                    module._parameters.update(saved)

            module.forward = forward
            return module
        return ALL_PARALLEL_STYLES["local_params"].install_forward(module, mesh)  # projections on this rank's branch


if dist.is_available():
    # "layer_parallel_rowwise": `rowwise`, except on the branch-split projections of block pairs;
    # "layer_parallel_block": the other parts of block pairs (nothing on ordinary layers' modules of the same name).
    ALL_PARALLEL_STYLES.register("layer_parallel_rowwise", BlockPairTensorParallel(ALL_PARALLEL_STYLES["rowwise"]))
    ALL_PARALLEL_STYLES.register("layer_parallel_block", BlockPairTensorParallel())

# Plan rules that replace / extend the config's plan in models with merged block pairs.
_BLOCK_PAIR_TP_RULES = {
    "layers.*.self_attn.o_proj": "layer_parallel_rowwise",
    "layers.*.mlp.down_proj": "layer_parallel_rowwise",
    "layers.*.post_attention_layernorm": "layer_parallel_block",
    "layers.*.mlp": "layer_parallel_block",
    "layers.*.branch_input": "layer_parallel_block",
    "layers.*.branch_sum": "layer_parallel_block",
}


def _peft_layer_names(model: nn.Module) -> list[str]:
    """Names of the peft adapter layers (LoRA linears, parameter wrappers) inside `model`."""
    return [name for name, m in model.named_modules() if type(m).__module__.partition(".")[0] == "peft"]


def _replaced_linear_names(model: nn.Module) -> list[tuple[str, str]]:
    """`(name, class name)` of the decoder projections and LM head of a causal LM that are not plain `nn.Linear`:
    FP8 training linears (torchao `Float8Linear`, `hf_ext.fp8`'s emulated `Fp8Linear`), quantized or otherwise
    replaced linears. Their weights and state do not fit the plain `nn.Linear` layers of a converted model."""
    found = []
    for prefix, root in (("model.layers", getattr(getattr(model, "model", None), "layers", None)),
                         ("lm_head", getattr(model, "lm_head", None))):  # fmt: skip
        if not isinstance(root, nn.Module):
            continue
        for name, module in root.named_modules():
            full = f"{prefix}.{name}" if name else prefix
            leaf = full.rpartition(".")[2]
            projection = leaf.endswith("_proj") or leaf == "lm_head"
            if type(module) is not nn.Linear and (isinstance(module, nn.Linear) or projection):
                found.append((full, type(module).__name__))
    return found


def merge_peft_adapters(peft_model, merge: bool = True):
    """`peft_model.merge_and_unload()` (with `merge=False`: `unload()`) for a layer-paired model, completed.

    Block pairs adapted as the docs show (`target_parameters` on the MLP's `gate_weight` / `up_weight` and
    `down_proj` in `target_modules`) nest the down projection's LoRA layer inside the MLP's parameter wrapper; peft
    replaces the wrapper by its MLP first and then no longer reaches the nested layer, which stays: unmerged, still
    applied, and saved as adapter weights (`from_pretrained` then initialises `down_proj.weight` at random). This
    merges (or drops) such leftovers as well, so the returned model holds no adapter layer.

    Args:
        peft_model (`peft.PeftModel`): A peft model of a `LayerParallelForCausalLM` (any peft model works).
        merge (`bool`, *optional*, defaults to `True`): Merge the adapters into the weights; `False` drops them.

    Returns:
        The base model without adapter layers.
    """
    if not hasattr(peft_model, "merge_and_unload"):
        raise TypeError(f"`peft_model` must be a peft model, got {type(peft_model).__name__}.")
    model = peft_model.merge_and_unload() if merge else peft_model.unload()
    while leftover := _peft_layer_names(model):
        name = leftover[0]
        layer = model.get_submodule(name)
        if merge and hasattr(layer, "merge"):
            layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    return model


class LayerParallelPreTrainedModel(PreTrainedModel):
    config: LayerParallelConfig
    config_class = LayerParallelConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "LlamaDecoderLayer",
        "MistralDecoderLayer",
        "Qwen2DecoderLayer",
        "LayerParallelBranchPair",
        "LayerParallelMergedBlockPair",
    ]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    # One hidden state per cache slot (`config.num_hidden_layers + 1` in all) and one attention map per attention.
    _can_record_outputs = {
        "hidden_states": OutputRecorder(
            target_class=(
                *_all_source_classes("DecoderLayer"),
                LayerParallelMergedBlockPair,
                LayerParallelBranchPair,
                BranchStateTap,
            ),
            index=0,
        ),
        "attentions": OutputRecorder(target_class=_all_source_classes("Attention"), index=1),
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, refused while peft adapter layers remain inside the model: their weights
        would be saved under adapter names and `from_pretrained` would initialise the wrapped weights at random."""
        leftover = _peft_layer_names(self)
        if leftover:
            raise ValueError(
                f"The model still holds peft adapter layers ({', '.join(leftover[:3])}{', ...' if len(leftover) > 3 else ''}),"
                " e.g. left by `merge_and_unload()` on block pairs. Merge them with "
                "`hf_ext.models.layer_parallel.merge_peft_adapters(peft_model)`, or save the adapter with the peft "
                "model's own `save_pretrained`."
            )
        return super().save_pretrained(save_directory, *args, **kwargs)

    def set_attn_implementation(self, attn_implementation: str | dict, *args, **kwargs):
        """transformers' `set_attn_implementation`. The source layers are this model's own modules and read
        `config.source_config`, so a single implementation applies to them as to the model; without this, transformers
        sets the sub-config "in the dark" and warns of undefined behaviour on every call. On an error (e.g. an
        implementation that is not installed) nothing is changed."""
        source = self.config.source_config
        before = source._attn_implementation_internal
        if isinstance(attn_implementation, str):
            source._attn_implementation_internal = attn_implementation
        try:
            return super().set_attn_implementation(attn_implementation, *args, **kwargs)
        except Exception:
            source._attn_implementation_internal = before
            raise

    def attentions_per_source_layer(
        self, attentions: tuple[torch.Tensor | None, ...]
    ) -> tuple[torch.Tensor | None, ...]:
        """Split the per-slot attention maps of `output_attentions=True` into one map per source layer.

        A merged pair returns a single map holding the heads of both of its layers (`2 * num_attention_heads`, layer
        `i` first, see [`LayerParallelConfig.attention_heads_per_slot`]); it is split into the two layers' maps.
        Unpaired layers and unmerged pairs already return one map per layer.

        Args:
            attentions (`tuple[torch.Tensor]`): `outputs.attentions`, one map per slot
                (`config.num_hidden_layers` entries) of shape `(batch, heads, query_length, key_length)`.

        Returns:
            `tuple[torch.Tensor]`: `config.source_config.num_hidden_layers` maps with `num_attention_heads` heads each.

        Raises:
            `ValueError`: when `attentions` does not have one entry per slot, or a slot's map has an unexpected number
                of heads, or the model runs under tensor parallelism (each rank then holds its own heads' maps).
        """
        if (getattr(self, "_tp_size", None) or 1) > 1:
            raise ValueError(
                "attentions_per_source_layer: under tensor parallelism each rank's `outputs.attentions` holds the maps "
                "of its own heads only (at TP=2 a merged pair's slot is one source layer per rank); call it on a model "
                "loaded without tensor parallelism."
            )
        if attentions is None or len(attentions) != self.config.num_hidden_layers:
            got = None if attentions is None else len(attentions)
            raise ValueError(
                f"`attentions` must hold one map per slot ({self.config.num_hidden_layers}), got {got}; pass "
                "`outputs.attentions` of a forward with `output_attentions=True`."
            )
        expected_heads = self.config.attention_heads_per_slot()
        per_layer: list[torch.Tensor | None] = []
        for heads, attention in zip(expected_heads, attentions):
            if attention is not None and attention.shape[1] != heads:
                raise ValueError(
                    f"An attention map has {attention.shape[1]} heads where its slot has {heads}; pass the "
                    "`outputs.attentions` of this model."
                )
            if heads == self.config.num_attention_heads:
                per_layer.append(attention)
            else:  # a merged pair: both layers' heads, layer i first
                per_layer.extend((None, None) if attention is None else attention.chunk(2, dim=1))
        return tuple(per_layer)

    @classmethod
    def maybe_distribute_model(cls, model, distributed_config, mesh_manager):
        """Tensor parallelism (transformers' own, `from_pretrained(..., tp_plan="auto")` under `torchrun`), after
        checking that the plan can split this model: head counts divisible by the TP size, and merged "block" pairs
        (one whole branch per rank) only at TP size 2 and without an MLP down-projection bias."""
        cfg = model.config
        tp_size = getattr(distributed_config, "tp_size", 1) or 1
        if mesh_manager is not None and tp_size > 1:
            if cfg.lp_merged and cfg.lp_mode == "block" and cfg.lp_pairs:
                if tp_size != 2:
                    raise ValueError(
                        f"Tensor parallelism of merged lp_mode='block' pairs puts one whole branch on each rank, so it "
                        f"needs tp_size=2 (got {tp_size}); use tp_size=2, or convert with mode='sublayer' (any tp_size "
                        "that divides the head counts)."
                    )
                if getattr(cfg.source_config, "mlp_bias", False):
                    raise ValueError(
                        "Tensor parallelism of merged lp_mode='block' pairs does not support a bias on the MLP down "
                        "projection (the source config's `mlp_bias=True`); convert with mode='sublayer' or with "
                        "merge=False."
                    )
            if not cfg.lp_merged and cfg.lp_pairs and cfg.lp_mlp_norm == "official_tp_split":
                raise ValueError(
                    "Tensor parallelism of unmerged pairs with lp_mlp_norm='official_tp_split' is not supported (their "
                    "MLP slices the full weights by hand); merge the pairs (convert with merge=True, the reference "
                    "code's TP form, which splits them exactly) or use lp_mlp_norm='per_layer'."
                )
            for name, heads in (
                ("num_attention_heads", cfg.num_attention_heads),
                ("num_key_value_heads", cfg.num_key_value_heads),
            ):
                if heads % tp_size:
                    raise ValueError(
                        f"Tensor parallelism over {tp_size} ranks needs {name} ({heads}) divisible by {tp_size}; "
                        "use a tp_size that divides it."
                    )
            for module in model.modules():  # modules swapped in since construction (quantization) are marked too
                if isinstance(module, LayerParallelMergedBlockPair):
                    module.mark_tensor_parallel_parts()
        return super().maybe_distribute_model(model, distributed_config, mesh_manager)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus a clear warning (on top of transformers' loading report) when the
        checkpoint lacks decoder weights this architecture needs, for instance because its `source_config` was edited
        to more layers in a file saved without `lp_weight_layout` (configs that have it fail to load instead)."""
        wants_info = kwargs.get("output_loading_info", False)
        kwargs["output_loading_info"] = True
        model, info = super().from_pretrained(*args, **kwargs)
        missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(("layers.", "model.layers.")))
        if missing:
            shown = ", ".join(missing[:4]) + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
            warnings.warn(
                f"The checkpoint has no weights for {len(missing)} decoder parameters of this layer-parallel "
                f"architecture ({shown}); they were initialised at random, so the model's outputs are meaningless. "
                "Its config (`source_config`, `lp_pairs`, `lp_merged` or `lp_mode`) does not match the saved weights: "
                "restore it, or convert the source model again with `convert_to_layer_parallel`.",
                UserWarning,
                stacklevel=2,
            )
        return (model, info) if wants_info else model

    def _init_weights(self, module: nn.Module) -> None:
        # Every weight follows the source config's `initializer_range`, as in a Llama / Mistral / Qwen2 built from
        # that config (the base class reads `self.config.initializer_range`, which this config does not have, and
        # would fall back to 0.02 for the plain Linear and Embedding layers).
        std = getattr(self.config.source_config, "initializer_range", None) or 0.02
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        else:
            super()._init_weights(module)
        if isinstance(module, (BranchwiseLinear, BranchwiseGatedMLP)):  # stacked weights (the split ones are linears)
            for weight_name, bias_name in module._BRANCH_GROUPS.values():
                if getattr(module, weight_name) is not None:
                    init.normal_(getattr(module, weight_name), mean=0.0, std=std)
                if getattr(module, bias_name) is not None:
                    init.zeros_(getattr(module, bias_name))


class LayerParallelModel(LayerParallelPreTrainedModel):
    """Decoder stack: embeddings, the blocks of `config.build_blocks()` (layers and pairs), final norm."""

    def __init__(self, config: LayerParallelConfig):
        super().__init__(config)
        src = config.source_config
        # The decoder layers read the attention kernel from the source config they were built with; `forward` keeps
        # it in step with this model's config (which `set_attn_implementation` changes).
        self._layer_config = src
        src._attn_implementation = config._attn_implementation
        layer_cls, norm_cls, rotary_cls = source_classes(src.model_type)
        self.padding_idx = src.pad_token_id
        self.vocab_size = src.vocab_size
        self.embed_tokens = nn.Embedding(src.vocab_size, src.hidden_size, self.padding_idx)
        source_types = config.source_layer_types()
        blocks: list[nn.Module] = []
        self.block_attention_types: list[str] = []
        slot = 0
        for kind, idx in config.build_blocks():
            self.block_attention_types.append(source_types[idx[0]])
            if kind == "layer":
                block = layer_cls(src, idx[0])  # built with its source index so per-layer settings stay right
                block.self_attn.layer_idx = slot
                slot += 1
            elif not config.lp_merged:
                layer_a, layer_b = layer_cls(src, idx[0]), layer_cls(src, idx[1])
                layer_a.self_attn.layer_idx, layer_b.self_attn.layer_idx = slot, slot + 1
                block = LayerParallelBranchPair(layer_a, layer_b, config.lp_mode, config.lp_mlp_norm)
                slot += 2
            elif config.lp_mode == "sublayer":
                block = _widen_decoder_layer(layer_cls(src, idx[0]))
                block.self_attn.layer_idx = slot
                slot += 1
            else:
                attn = _widen_decoder_layer(layer_cls(src, idx[0])).self_attn
                attn.o_proj = BranchwiseLinear(
                    2, attn.o_proj.in_features // 2, attn.o_proj.out_features, bias=attn.o_proj.bias is not None
                )
                attn.layer_idx = slot
                ref_mlp = layer_cls(src, idx[0]).mlp
                mlp = BranchwiseGatedMLP(
                    2,
                    src.hidden_size,
                    src.intermediate_size,
                    ref_mlp.act_fn,
                    gate_up_bias=ref_mlp.gate_proj.bias is not None,
                    down_bias=ref_mlp.down_proj.bias is not None,
                )
                block = LayerParallelMergedBlockPair(attn, norm_cls, src.hidden_size, src.rms_norm_eps, mlp)
                slot += 1
            blocks.append(block)
        self.layers = nn.ModuleList(blocks)
        self.norm = norm_cls(src.hidden_size, eps=src.rms_norm_eps)
        self.rotary_emb = rotary_cls(config=src)
        self.gradient_checkpointing = False
        self.post_init()

    def init_parallel_plans(self) -> None:
        """The config's tensor-parallel plan, plus the same rules for the two branches of unmerged pairs, and the
        branch-wise rules of merged "block" pairs (`BlockPairTensorParallel`); only the rules that name modules of
        this model are kept."""
        super().init_parallel_plans()
        base = type(self.config).base_model_tp_plan
        plan = {k: v for k, v in self._tp_plan.items() if k not in base}
        rules = dict(base)
        for branch in ("branch_a", "branch_b"):
            rules.update({key.replace("layers.*.", f"layers.*.{branch}.", 1): style for key, style in base.items()})
        if any(isinstance(module, LayerParallelMergedBlockPair) for module in self.layers):
            rules.update(_BLOCK_PAIR_TP_RULES)
        names = {".".join("*" if p.isdigit() else p for p in name.split(".")) for name, _ in self.named_modules()}
        plan.update({key: style for key, style in rules.items() if key in names})
        self._tp_plan = plan

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        """Run the decoder stack.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): Token ids (or give `inputs_embeds`).
            attention_mask (`torch.Tensor` or `dict`, *optional*): 2D padding mask, or masks prepared per attention
                type by `generate`.
            position_ids (`torch.LongTensor`, *optional*): Positions; default continues after the cached tokens.
            cache (`Cache`, *optional*): `DynamicCache`, `StaticCache`, ... with `config.num_hidden_layers` slots.
            inputs_embeds (`torch.Tensor`, *optional*): Input embeddings instead of `input_ids`.
            use_cache (`bool`, *optional*): Create and return a `DynamicCache` when none is given.
            output_hidden_states (`bool`, *optional*): Also return the hidden states: the embeddings, then one per
                cache slot (the last one after the final norm, as in Llama), `config.num_hidden_layers + 1` in all.
            output_attentions (`bool`, *optional*): Also return the attention maps, one per attention module
                (`config.num_hidden_layers`; a merged pair's map holds the heads of both layers). Needs the eager
                kernel (`attn_implementation="eager"`).
            return_dict (`bool`, *optional*): `False` returns a tuple.
        """
        if self._layer_config._attn_implementation != self.config._attn_implementation:
            self._layer_config._attn_implementation = self.config._attn_implementation
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)

        if isinstance(attention_mask, dict):
            masks = attention_mask
        else:
            mask_kwargs = dict(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                position_ids=position_ids,
            )
            masks = {kind: _MASK_FUNCTIONS[kind](**mask_kwargs) for kind in sorted(set(self.block_attention_types))}

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for block, kind in zip(self.layers, self.block_attention_types):
            hidden_states = block(
                hidden_states,
                attention_mask=masks[kind],
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)


class LayerParallelForCausalLM(LayerParallelPreTrainedModel, GenerationMixin):
    """Causal LM whose decoder runs some pairs of adjacent layers in parallel (see [`LayerParallelConfig`]).

    Build one from a pretrained Llama, Mistral or Qwen2 model with [`convert_to_layer_parallel`]; save it with
    `save_pretrained` and load it back with `AutoModelForCausalLM.from_pretrained` (after `import hf_ext`).
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: LayerParallelConfig):
        super().__init__(config)
        self.model = LayerParallelModel(config)
        self.vocab_size = config.source_config.vocab_size
        self.lm_head = nn.Linear(config.source_config.hidden_size, self.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def init_continuous_batching(self, *args, **kwargs):
        """transformers' continuous batching (`generate_batch`, `continuous_batching_context_manager`, `transformers
        serve`; all start here). Its paged KV cache has one head count for every layer, so models with merged pairs
        are refused here: their merged slots hold twice the KV heads (`config.kv_heads_per_slot()`)."""
        heads = self.config.kv_heads_per_slot()
        if len(set(heads)) > 1:
            raise ValueError(
                "Continuous batching (generate_batch / init_continuous_batching) keeps one paged KV cache with the same "
                f"number of KV heads in every layer, but this model's merged pairs hold more (KV heads per cache slot: "
                f"{heads}). Use `generate(...)`, or build the model with `lp_merged=False` (the same computation, one "
                "cache slot per source layer), which continuous batching supports."
            )
        return super().init_continuous_batching(*args, **kwargs)

    def generate(self, *args, **kwargs):
        """transformers' `generate`, except self-speculative early exit (`assistant_early_exit`), which is refused: it
        drafts with the first layers by setting `config.num_hidden_layers`, but this model's depth follows from
        `source_config` and `lp_pairs` (the config refuses another value), so it would draft with the whole model."""
        configs = [kwargs.get("generation_config"), self.generation_config]
        configs += [a for a in args if isinstance(a, GenerationConfig)]
        if kwargs.get("assistant_early_exit") is not None or any(
            getattr(c, "assistant_early_exit", None) is not None for c in configs
        ):
            raise ValueError(
                "assistant_early_exit (self-speculative decoding with the first layers) is not supported by "
                "layer-parallel models: their depth is derived from `source_config` and `lp_pairs`, so "
                "`config.num_hidden_layers` cannot be lowered to draft with fewer layers. Drop it, or pass a smaller "
                "model as `assistant_model`."
            )
        return super().generate(*args, **kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        """Next-token logits (and the causal LM loss when `labels` are given).

        Args:
            labels (`torch.LongTensor` of shape `(batch, seq)`, *optional*): Targets (shifted inside); -100 is ignored.
            logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0): Compute logits only for the last
                `logits_to_keep` positions (0 = all), or for the given positions.

        Other arguments as in [`LayerParallelModel.forward`].
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def paired_block_indices(self) -> list[int]:
        """Indices in `model.layers` of the blocks that hold a pair."""
        return [i for i, (kind, _) in enumerate(self.config.build_blocks()) if kind == "pair"]

    def set_pair_finetuning(self, enabled: bool = True) -> list[str]:
        """Fine-tune mode: only the paired blocks keep `requires_grad=True`; everything else is frozen.

        Args:
            enabled (`bool`, *optional*, defaults to `True`): `False` makes every parameter trainable again.

        Returns:
            `list[str]`: names of the trainable parameters.

        Raises:
            `TypeError`: when `enabled` is not a bool (`"false"` or `None` would freeze or unfreeze by truthiness).
            `ValueError`: when the model has no pair to fine-tune.
        """
        if not _is_bool(enabled):
            raise TypeError(
                f"`enabled` must be True (fine-tune only the paired blocks) or False (make every parameter trainable), "
                f"got {enabled!r}."
            )
        blocks = self.paired_block_indices()
        if enabled and not blocks:
            raise ValueError("This model has no paired layers to fine-tune; convert it with a non-empty range first.")
        prefixes = tuple(f"model.layers.{i}." for i in blocks)
        trainable = []
        for name, param in self.named_parameters():
            param.requires_grad_(not enabled or name.startswith(prefixes))
            if param.requires_grad:
                trainable.append(name)
        return trainable


# --------------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float32, or the widest floating dtype among `tensors` when wider (float64 weights are merged in float64;
    bf16 / fp16 ones in float32, then cast to the model dtype when loaded)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _fold(weight: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """`W @ diag(g)` computed in float32 (or wider, for float64 weights): a projection reading `g * x_hat` becomes
    one reading `x_hat`."""
    dtype = _compute_dtype(weight, gain)
    return weight.to(dtype) * gain.to(dtype)[None, :]


def _cat_bias(*biases: torch.Tensor | None) -> torch.Tensor | None:
    if biases[0] is None:
        return None
    dtype = _compute_dtype(*biases)
    return torch.cat([b.to(dtype) for b in biases])


def _sum_bias(*biases: torch.Tensor | None) -> torch.Tensor | None:
    if biases[0] is None:
        return None
    dtype = _compute_dtype(*biases)
    return sum(b.to(dtype) for b in biases)


def merge_pair_state(
    state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor], mode: str, mlp_norm: str
) -> dict[str, torch.Tensor]:
    """Weights of the merged layer for a pair of source decoder layers (state dicts with layer-relative names).

    The RMSNorm gains are folded into the projections that read them, heads and neurons are concatenated
    (branch a first), output projections are concatenated along their input so the branch sum falls out of the
    matmul. Computed in float32, or in the weights' own precision when it is wider (float64 stays float64); cast to
    the model dtype when loaded.

    Args:
        state_a, state_b (`dict[str, torch.Tensor]`): `input_layernorm.weight`, `self_attn.q_proj.weight`, ... of
            the two layers.
        mode (`str`): `"sublayer"` or `"block"`.
        mlp_norm (`str`): `"per_layer"` or `"official_tp_split"`.

    Returns:
        `dict[str, torch.Tensor]`: state dict of the merged block (relative names).
    """
    # a misspelt mode ("Block") or norm used to give the sublayer / per-layer layout without a word
    if mode not in LP_MODES:
        raise ValueError(f"`mode` must be one of {list(LP_MODES)}, got {mode!r}.")
    if mlp_norm not in LP_MLP_NORMS:
        raise ValueError(f"`mlp_norm` must be one of {list(LP_MLP_NORMS)}, got {mlp_norm!r}.")
    out: dict[str, torch.Tensor] = {}
    g1 = (state_a["input_layernorm.weight"], state_b["input_layernorm.weight"])
    g2 = (state_a["post_attention_layernorm.weight"], state_b["post_attention_layernorm.weight"])
    states = (state_a, state_b)
    dtype = _compute_dtype(*state_a.values(), *state_b.values())
    out["input_layernorm.weight"] = torch.ones_like(g1[0], dtype=dtype)
    out["post_attention_layernorm.weight"] = torch.ones_like(g2[0], dtype=dtype)
    for name in ("q_proj", "k_proj", "v_proj"):
        out[f"self_attn.{name}.weight"] = torch.cat(
            [_fold(s[f"self_attn.{name}.weight"], g) for s, g in zip(states, g1)]
        )
        bias = _cat_bias(*(s.get(f"self_attn.{name}.bias") for s in states))
        if bias is not None:
            out[f"self_attn.{name}.bias"] = bias
    o_weights = [s["self_attn.o_proj.weight"].to(dtype) for s in states]
    o_biases = [s.get("self_attn.o_proj.bias") for s in states]
    if mode == "block":
        out["self_attn.o_proj.weight"] = torch.stack(o_weights)
        if o_biases[0] is not None:
            out["self_attn.o_proj.bias"] = torch.stack([b.to(dtype) for b in o_biases])
        out["mlp.gate_weight"] = torch.stack([_fold(s["mlp.gate_proj.weight"], g) for s, g in zip(states, g2)])
        out["mlp.up_weight"] = torch.stack([_fold(s["mlp.up_proj.weight"], g) for s, g in zip(states, g2)])
        if states[0].get("mlp.gate_proj.bias") is not None:
            out["mlp.gate_bias"] = torch.stack([s["mlp.gate_proj.bias"].to(dtype) for s in states])
            out["mlp.up_bias"] = torch.stack([s["mlp.up_proj.bias"].to(dtype) for s in states])
        prefix_down = "mlp.down_proj"
    else:
        out["self_attn.o_proj.weight"] = torch.cat(o_weights, dim=1)
        if o_biases[0] is not None:
            out["self_attn.o_proj.bias"] = _sum_bias(*o_biases)
        for name in ("gate_proj", "up_proj"):
            parts = []
            for s, g in zip(states, g2):
                w = s[f"mlp.{name}.weight"]
                if mlp_norm == "official_tp_split":
                    half = w.shape[0] // 2
                    parts += [_fold(w[:half], g2[0]), _fold(w[half:], g2[1])]
                else:
                    parts.append(_fold(w, g))
            out[f"mlp.{name}.weight"] = torch.cat(parts)
            bias = _cat_bias(*(s.get(f"mlp.{name}.bias") for s in states))
            if bias is not None:
                out[f"mlp.{name}.bias"] = bias
        prefix_down = "mlp.down_proj"
    out[f"{prefix_down}.weight"] = torch.cat([s["mlp.down_proj.weight"].to(dtype) for s in states], dim=1)
    down_bias = _sum_bias(*(s.get("mlp.down_proj.bias") for s in states))
    if down_bias is not None:
        out[f"{prefix_down}.bias"] = down_bias
    return out


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _layer_state(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    prefix = f"model.layers.{index}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _match_rotary_buffer_dtypes(target: nn.Module, source: nn.Module | None) -> None:
    """Give the converted model's rotary-embedding buffers (`inv_freq`, `original_inv_freq`) the dtypes of the
    source's. A new rotary embedding computes them in float32, while a source cast with `model.to(torch.bfloat16)`
    (or `.half()`) holds cast ones and runs its RoPE with them: the converted model then computed other position
    angles than its source (`start == end` was not the source's function). The values are the same computation, cast
    as the source's were."""
    if not isinstance(source, nn.Module):
        return
    source_buffers = dict(source.named_buffers(recurse=False))
    for name, buffer in list(target.named_buffers(recurse=False)):
        held = source_buffers.get(name)
        if (
            held is not None
            and not held.is_meta
            and held.is_floating_point()
            and held.dtype != buffer.dtype
            and held.shape == buffer.shape
        ):
            setattr(target, name, buffer.to(held.dtype))


def check_source_model(model) -> None:
    """Refuse a `model` that [`convert_to_layer_parallel`] cannot pair (also checked by `perplexity_sweep` before it
    evaluates anything): not a transformers model, an already converted or peft-wrapped model, a model type other
    than `llama` / `mistral` / `qwen2`, a model without `.model.layers` and `.lm_head`, or one whose linears were
    replaced (FP8, quantized)."""
    if isinstance(model, LayerParallelForCausalLM):
        raise TypeError("`model` is already a LayerParallelForCausalLM; convert the original source model instead.")
    if isinstance(model, nn.Module) and _peft_layer_names(model):
        raise TypeError(
            f"`model` carries peft adapters ({type(model).__name__} with adapter layers), which cannot be paired "
            "as they are. Merge them first: `convert_to_layer_parallel(model.merge_and_unload(), ...)`; or convert "
            "the base model and attach new adapters to the converted model."
        )
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"`model` must be a transformers PreTrainedModel, got {type(model).__name__}.")
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_SOURCE_MODEL_TYPES:
        raise ValueError(
            f"`model` has model_type {model_type!r}; convert_to_layer_parallel supports "
            f"{list(SUPPORTED_SOURCE_MODEL_TYPES)} causal LMs."
        )
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        raise TypeError(
            f"`model` must be a causal LM with `.model.layers` and `.lm_head` (e.g. LlamaForCausalLM), got "
            f"{type(model).__name__}."
        )
    replaced = _replaced_linear_names(model)
    if replaced:
        # copied into the plain nn.Linear layers of the new model, an FP8 linear's weight would silently compute in
        # high precision (torchao's Float8Linear) or leave its scaling buffers over (hf_ext's emulated Fp8Linear)
        name, kind = replaced[0]
        raise TypeError(
            f"`model` holds linear layers that are not plain nn.Linear ({name} is {kind}"
            f"{f', and {len(replaced) - 1} more' if len(replaced) > 1 else ''}): FP8 or quantized linears cannot be "
            "paired, their FP8 execution or quantization would be lost. Pair first, then apply FP8 to the converted "
            "model: `hf_ext.fp8.convert(convert_to_layer_parallel(model, ...))` with `model` in high precision "
            "(e.g. reloaded with `from_pretrained`, which gives plain nn.Linear layers)."
        )


def convert_to_layer_parallel(
    model: PreTrainedModel,
    start: int | None = None,
    end: int | None = None,
    mode: str = "sublayer",
    merge: bool = True,
    *,
    pairs: list | None = None,
    mlp_norm: str = "per_layer",
) -> LayerParallelForCausalLM:
    """Convert a pretrained Llama, Mistral or Qwen2 causal LM into a [`LayerParallelForCausalLM`].

    Layers `start, start + 1, ..., end - 1` are paired two by two; every other layer stays sequential. The source
    model is left untouched; the new model lives on the same device with the same dtype and attention kernel. A source
    loaded with CPU or disk offload (`from_pretrained(..., device_map="auto")` beyond the accelerators' memory) is
    read back through accelerate (`get_state_dict_offloaded_model`) and converted whole on the CPU: save the result
    and reload it with a `device_map` to offload it again. Tied embeddings (`tie_word_embeddings=True`) stay tied:
    the converted `lm_head.weight` is its `model.embed_tokens.weight`.

    Args:
        model (`PreTrainedModel`): A `LlamaForCausalLM`, `MistralForCausalLM` or `Qwen2ForCausalLM` (any model whose
            `config.model_type` is `llama`, `mistral` or `qwen2`), in high precision: decoder projections and LM head
            must be plain `nn.Linear` (pair first, then apply FP8 with `hf_ext.fp8.convert`).
        start (`int`, *optional*): First paired layer (inclusive). Give `start` and `end`, or `pairs`: a call
            with neither is an error (it would return the source model unpaired).
        end (`int`, *optional*): End of the paired range (exclusive); `end - start` must be even. `start == end`
            gives a model that computes exactly what the source computes.
        mode (`str`, *optional*, defaults to `"sublayer"`): `"sublayer"` (both attentions read x, then both MLPs
            read h; the reference code's form) or `"block"` (whole blocks in parallel).
        merge (`bool`, *optional*, defaults to `True`): Fold the norm gains and concatenate each pair into one wide
            layer (fast path). `False` keeps two branches and sums them (reference path).
        pairs (`list[list[int]]`, *optional*): Explicit adjacent pairs instead of `start`/`end` (giving both is an
            error).
        mlp_norm (`str`, *optional*, defaults to `"per_layer"`): `"per_layer"` or `"official_tp_split"` (see
            [`LayerParallelConfig`]).

    Returns:
        [`LayerParallelForCausalLM`] in eval mode.

    Example:

    ```python
    >>> lp = convert_to_layer_parallel(llama, start=4, end=8)      # pairs (4, 5) and (6, 7)
    >>> lp.save_pretrained("llama-lp")                              # reload with AutoModelForCausalLM
    ```
    """
    check_source_model(model)
    if not _is_bool(merge):
        raise TypeError(f"`merge` must be True or False, got {merge!r}.")
    merge = bool(merge)
    # by this function's argument names (the config's own check names its fields, lp_mode / lp_mlp_norm)
    if mode not in LP_MODES:
        raise ValueError(f"`mode` must be one of {list(LP_MODES)}, got {mode!r}.")
    if mlp_norm not in LP_MLP_NORMS:
        raise ValueError(f"`mlp_norm` must be one of {list(LP_MLP_NORMS)}, got {mlp_norm!r}.")
    if pairs is None and start is None and end is None:
        # without a range the result would be the source model unpaired, silently: name the choice instead
        raise ValueError(
            "Name the layers to pair: `start` and `end` (e.g. `convert_to_layer_parallel(model, start=4, end=8)` pairs "
            "(4, 5) and (6, 7); `perplexity_sweep` / `choose_range` of `hf_ext.models.layer_parallel.sweep` find a "
            "range) or `pairs`. `start == end` (or `pairs=[]`) converts without pairing, to compare against."
        )
    if pairs is not None and (start is not None or end is not None):
        raise ValueError(
            f"Give either `pairs` or the range `start`/`end`, not both (got start={start}, end={end}, pairs={pairs})."
        )
    source_config = copy.deepcopy(model.config)
    kwargs = dict(pairs=pairs) if pairs is not None else dict(start=start, end=end)
    config = LayerParallelConfig(
        source_config=source_config,
        lp_start=kwargs.get("start"),
        lp_end=kwargs.get("end"),
        lp_pairs=pairs,
        lp_mode=mode,
        lp_mlp_norm=mlp_norm,
        lp_merged=merge,
    )  # validates everything before any weight is touched
    config._attn_implementation = model.config._attn_implementation
    # No `name_or_path`: the converted model is not the source checkpoint (that path stays in `source_config`). peft
    # records it as the adapters' base and reads it back as this model's config (which a source folder is not).

    source_state = model.state_dict()
    device = next(model.parameters()).device
    if any(v.is_meta for v in source_state.values()):
        if not getattr(model, "hf_device_map", None):
            raise ValueError(
                "`model` has weights on the meta device, without data (built under `init_empty_weights` or "
                "`torch.device('meta')`?): load its weights first, e.g. with `from_pretrained`."
            )
        # offloaded to CPU or disk by accelerate's big-model loading (`device_map="auto"`, `offload_folder`): its
        # state_dict holds placeholders; accelerate reads the weights back one module at a time, onto the CPU
        from accelerate.utils.modeling import get_state_dict_offloaded_model

        source_state = get_state_dict_offloaded_model(model)
        device = torch.device("cpu")
    embed = source_state["model.embed_tokens.weight"]
    head = source_state.get("lm_head.weight", embed)
    if config.tie_word_embeddings and head is not embed and not torch.equal(head, embed):
        # transformers loads such a checkpoint untied (its config is wrong); tying the converted model would change
        # the source's logits
        raise ValueError(
            "`model.config.tie_word_embeddings` is True but the model's lm_head weight differs from its input "
            "embeddings (the source is untied): set `model.config.tie_word_embeddings = False` before converting to "
            "keep both matrices, or tie the source first (`model.tie_weights()`)."
        )
    new_state: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": embed,
        "model.norm.weight": source_state["model.norm.weight"],
    }
    if not config.tie_word_embeddings:
        new_state["lm_head.weight"] = head
    for block, (kind, idx) in enumerate(config.build_blocks()):
        prefix = f"model.layers.{block}."
        if kind == "layer":
            new_state.update({prefix + k: v for k, v in _layer_state(source_state, idx[0]).items()})
        elif merge:
            merged = merge_pair_state(
                _layer_state(source_state, idx[0]), _layer_state(source_state, idx[1]), mode, mlp_norm
            )
            new_state.update({prefix + k: v for k, v in merged.items()})
        else:
            for branch, i in zip(("branch_a.", "branch_b."), idx):
                new_state.update({prefix + branch + k: v for k, v in _layer_state(source_state, i).items()})

    param = next(model.parameters())
    from transformers.initialization import no_init_weights

    with no_init_weights(), torch.device(device), _default_dtype(param.dtype):
        lp_model = LayerParallelForCausalLM(config)
    _match_rotary_buffer_dtypes(lp_model.model.rotary_emb, getattr(model.model, "rotary_emb", None))
    if config.tie_word_embeddings:
        # `no_init_weights` skips the tying a fresh model gets: without it lm_head stayed a separate Parameter, so
        # fine-tuning the converted model trained two matrices where the source and a fresh model train one
        lp_model.tie_weights()
    missing, unexpected = lp_model.load_state_dict(new_state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"Weight layout mismatch while converting: missing={missing}, unexpected={unexpected}.")
    if getattr(model, "generation_config", None) is not None:
        lp_model.generation_config = copy.deepcopy(model.generation_config)
    lp_model.eval()
    return lp_model


__all__ = [
    "LayerParallelForCausalLM",
    "LayerParallelModel",
    "LayerParallelPreTrainedModel",
    "check_source_model",
    "convert_to_layer_parallel",
    "merge_pair_state",
    "merge_peft_adapters",
]
