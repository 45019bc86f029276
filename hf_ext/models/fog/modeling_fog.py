"""FOG: a decoder-only transformer whose block GEMMs can all run in FP8 (Hernández-Cano, Garbaya, Schlag, Jaggi, 2025).

One class covers the FOG recipe and the Llama-style baseline; `FogConfig` switches decide where norms sit, how queries
and keys are normalised, the softmax scale, the MLP activation and the initialisation. Only single-dot relative imports
are used so that a folder written by `save_pretrained` loads with `trust_remote_code=True` without hf_ext installed.
"""

import json
import logging
import math
import os
import re
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import XIELUActivation
from transformers.cache_utils import Cache, DynamicCache
from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES, TensorParallelLayer
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_fog import FogConfig

# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------


class FogRMSNorm(nn.Module):
    """RMSNorm over the last dimension with a gain that is trainable or frozen (then it is a constant multiplier).

    Args:
        hidden_size (`int`): Size of the normalised dimension.
        eps (`float`): Added to the mean square.
        trainable (`bool`): If `False`, the gain is a persistent buffer, not a parameter (FOG's frozen QK gains):
            no optimizer, `requires_grad_()`, or reload can make it train, and checkpoints keep the same key.
        init_value (`float`): Initial gain (1/sqrt(L) for FOG's post-norms, 1 elsewhere).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, trainable: bool = True, init_value: float = 1.0):
        super().__init__()
        gain = torch.full((hidden_size,), float(init_value))
        if trainable:
            self.weight = nn.Parameter(gain)
        else:
            self.register_buffer("weight", gain, persistent=True)
        self.trainable = trainable
        self.variance_epsilon = eps
        self.init_value = float(init_value)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight.to(input_dtype) * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, trainable={self.trainable}"


class FogDyT(nn.Module):
    """Dynamic tanh `weight * tanh(alpha * x)` with a scalar trainable `alpha` (QK-DyT variant); no bias. A trainable
    gain starts at `gain_init`; a frozen gain (`trainable_gain=False`) is a persistent buffer of ones, as the
    reference's weight-less DyT (which ignores the gain init value)."""

    def __init__(self, hidden_size: int, alpha_init: float = 1.0, trainable_gain: bool = True, gain_init: float = 1.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))
        self.gain_init = float(gain_init) if trainable_gain else 1.0
        if trainable_gain:
            self.weight = nn.Parameter(torch.full((hidden_size,), self.gain_init))
        else:
            self.register_buffer("weight", torch.ones(hidden_size), persistent=True)
        self.alpha_init = float(alpha_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.to(x.dtype) * torch.tanh(self.alpha.to(x.dtype) * x)


class FogLayerScale(nn.Module):
    """Per-channel trainable scale (used only when `layerscale=True` and `post_norm=False`)."""

    def __init__(self, hidden_size: int, init_value: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((hidden_size,), float(init_value)))
        self.init_value = float(init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.to(x.dtype) * x


class FogGatedActivation(nn.Module):
    """SwiGLU `silu(gate) * up`. With `smooth="linear_branch"` (Smooth-SwiGLU as the reference code does it) the
    linear branch is divided by `s = max|gate|` per token (`s` detached) and `s` is returned so the MLP multiplies the
    down-projection output by it; with `smooth="product"` the product is divided by its own per-token max."""

    def __init__(self, smooth: str | None = None):
        super().__init__()
        self.smooth = smooth

    def forward(self, gate: torch.Tensor, up: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`group`: the tensor-parallel process group when `gate` / `up` hold this rank's slice of the neurons; the
        per-token max is then taken over all of them (every rank must divide by the same scale)."""
        tiny = torch.finfo(torch.float32).tiny
        if self.smooth == "linear_branch":
            scale = _global_amax(gate.detach().abs().amax(dim=-1, keepdim=True), group).clamp_min(tiny)
            return nn.functional.silu(gate) * (up / scale), scale
        h = nn.functional.silu(gate) * up
        if self.smooth == "product":
            scale = _global_amax(h.detach().abs().amax(dim=-1, keepdim=True), group).clamp_min(tiny)
            return h / scale, scale
        return h, None


def _linear_without_bias(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` with the bias left out of the GEMM: the module that holds the bias (the linear itself, an FP8
    conversion of it, or the base layer under a peft wrapper) runs without it for this call. A Transformer Engine
    `te.Linear` (`apply_bias`) skips it through its own switch."""
    bias = linear.bias
    owner = next((m for m in linear.modules() if m._parameters.get("bias") is bias), None)
    if owner is None:
        raise RuntimeError(f"FogMLP: cannot find the module holding the bias of {type(linear).__name__}.")
    if hasattr(owner, "apply_bias"):  # transformer_engine.pytorch.Linear
        applied, owner.apply_bias = owner.apply_bias, False
        try:
            return linear(x)
        finally:
            owner.apply_bias = applied
    owner._parameters["bias"] = None
    try:
        return linear(x)
    finally:
        owner._parameters["bias"] = bias


def _global_amax(local: torch.Tensor, group) -> torch.Tensor:
    if group is not None:
        torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.MAX, group=group)
    return local


def _row_parallel_group(linear: nn.Linear):
    """The process group over which `linear`'s input features are split (a row-wise tensor-parallel layer), else
    None. FSDP2 shards dim 0 and gathers full weights before the forward, so it never matches."""
    weight = linear.weight
    if not isinstance(weight, DTensor):
        return None
    for mesh_dim, placement in enumerate(weight.placements):
        if placement.is_shard() and placement.dim in (1, -1):
            return weight.device_mesh.get_group(mesh_dim)
    return None


def build_xielu(config: FogConfig) -> XIELUActivation:
    """transformers' xIELU with FOG's initial values, parameters in the default dtype (the model's load dtype)."""
    log = logging.getLogger("transformers.activations")
    level = log.level
    log.setLevel(logging.ERROR)  # the "CUDA-fused xIELU not available" notice is not actionable on most setups
    try:
        return XIELUActivation(
            alpha_p_init=config.xielu_alpha_p_init,
            alpha_n_init=config.xielu_alpha_n_init,
            beta=config.xielu_beta,
            eps=config.xielu_eps,
            dtype=torch.get_default_dtype(),
        )
    finally:
        log.setLevel(level)


def _inverse_softplus(value: float) -> float:
    """`log(expm1(value))`, computed as `value + log(-expm1(-value))` so that a large value does not overflow."""
    return value + math.log(-math.expm1(-value))


class FogMLP(nn.Module):
    """Gated (SwiGLU / Smooth-SwiGLU: `gate_proj`, `up_proj`, `down_proj`) or ungated (xIELU / GeLU: `up_proj`,
    `down_proj`) MLP. `mlp_alpha` multiplies the input when set."""

    def __init__(self, config: FogConfig):
        super().__init__()
        self.config = config
        self.gated = config.is_gated_mlp
        hidden, inter = config.hidden_size, config.intermediate_size
        if self.gated:
            self.gate_proj = nn.Linear(hidden, inter, bias=config.mlp_bias)
        self.up_proj = nn.Linear(hidden, inter, bias=config.mlp_bias)
        self.down_proj = nn.Linear(inter, hidden, bias=config.mlp_bias)
        self.down_proj._fog_residual_output = True
        if self.gated:
            smooth = {"smooth_swiglu": "linear_branch", "smooth_swiglu_product": "product"}.get(config.hidden_act)
            self.act_fn = FogGatedActivation(smooth)
        elif config.hidden_act == "xielu":
            self.act_fn = build_xielu(config)
        else:  # exact GELU as in the reference code; "gelu_tanh" is the tanh approximation
            self.act_fn = nn.GELU(approximate="tanh" if config.hidden_act == "gelu_tanh" else "none")

    @property
    def rescales_output(self) -> bool:
        """Whether the MLP output is the down projection's output times a per-token scale (Smooth-SwiGLU), so that the
        FP8 monitor's `mlp_out` site measures the MLP output (as the reference tracker does) instead of the
        down projection's."""
        return self.gated and self.act_fn.smooth is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.mlp_alpha is not None:
            x = x * self.config.mlp_alpha
        if not self.gated:
            return self.down_proj(self.act_fn(self.up_proj(x)))
        group = _row_parallel_group(self.down_proj) if self.act_fn.smooth is not None else None
        h, scale = self.act_fn(self.gate_proj(x), self.up_proj(x), group)
        if scale is None:
            return self.down_proj(h)
        # Smooth-SwiGLU: the down-projection (FP8) GEMM saw a per-token rescaled input; undo it on its output. Its
        # bias is added after the rescale (Megatron adds fc2's bias after `scaled_swiglu`'s scale), so Smooth-SwiGLU
        # equals SwiGLU with biases too.
        bias = self.down_proj.bias
        if bias is None:
            out = self.down_proj(h)
            return out * scale.to(out.dtype)
        out = _linear_without_bias(self.down_proj, h)
        if isinstance(bias, DTensor):  # tensor parallelism: the row-wise layer's bias is replicated
            bias = bias.to_local()
        return out * scale.to(out.dtype) + bias.to(out.dtype)


class FogRotaryEmbedding(nn.Module):
    """Rotary position embedding computed from `config.rope_parameters` (transformers' RoPE initialisers)."""

    def __init__(self, config: FogConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: FogConfig, device=None, seq_len=None) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    batch, num_kv, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_kv, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_kv * n_rep, slen, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


class FogAttention(nn.Module):
    """Grouped-query attention with optional per-head QK norm (RMS with frozen or trainable gain, or DyT) applied
    before RoPE, and a configurable softmax scale (`softmax_scale`, default 1/sqrt(head_dim))."""

    def __init__(self, config: FogConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = config.softmax_scale if config.softmax_scale is not None else self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        q_out, kv_out = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_out, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_out, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_out, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_out, config.hidden_size, bias=config.attention_bias)
        self.o_proj._fog_residual_output = True
        # `qk_norm_init` is the constant of frozen RMS gains and the initial value of trainable ones (the reference's
        # `--qknorm-init`, which sets both)
        gain, trainable = config.qk_norm_init, not config.freeze_qk_gain
        if config.qk_norm == "rms":
            self.q_norm = FogRMSNorm(self.head_dim, config.rms_norm_eps, trainable=trainable, init_value=gain)
            self.k_norm = FogRMSNorm(self.head_dim, config.rms_norm_eps, trainable=trainable, init_value=gain)
        elif config.qk_norm == "dyt":
            self.q_norm = FogDyT(self.head_dim, config.dyt_alpha_init, trainable_gain=trainable, gain_init=gain)
            self.k_norm = FogDyT(self.head_dim, config.dyt_alpha_init, trainable_gain=trainable, gain_init=gain)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape)
        key_states = self.k_proj(hidden_states).view(hidden_shape)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.config.qk_norm != "none":
            query_states, key_states = self.q_norm(query_states), self.k_norm(key_states)
        query_states, key_states = query_states.transpose(1, 2), key_states.transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class FogDecoderLayer(GradientCheckpointingLayer):
    """`h += N_out(Attn(N_in(h)))`, `h += N_out(MLP(N_in(h)))` where `N_in` exists with `pre_norm` and `N_out` with
    `post_norm` (the same module slot, `attention_layernorm` / `feedforward_layernorm`). Without post-norm,
    `layerscale=True` adds per-channel scales instead."""

    def __init__(self, config: FogConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.self_attn = FogAttention(config, layer_idx)
        self.mlp = FogMLP(config)
        if config.pre_norm or config.post_norm:
            gain = config.resolved_layerscale_init if (config.post_norm and config.layerscale) else 1.0
            self.attention_layernorm = FogRMSNorm(config.hidden_size, config.rms_norm_eps, init_value=gain)
            self.feedforward_layernorm = FogRMSNorm(config.hidden_size, config.rms_norm_eps, init_value=gain)
        if config.layerscale and not config.post_norm:
            self.attention_layerscale = FogLayerScale(config.hidden_size, config.resolved_layerscale_init)
            self.feedforward_layerscale = FogLayerScale(config.hidden_size, config.resolved_layerscale_init)

    def _sublayer(self, fn, norm: nn.Module | None, scale: nn.Module | None, h: torch.Tensor, **kwargs):
        x = norm(h) if (norm is not None and self.config.pre_norm) else h
        out = fn(x, **kwargs)
        attn_weights = None
        if isinstance(out, tuple):
            out, attn_weights = out
        if norm is not None and self.config.post_norm:
            out = norm(out)
        elif scale is not None:
            out = scale(out)
        return h + out, attn_weights

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        hidden_states, _ = self._sublayer(
            self.self_attn,
            getattr(self, "attention_layernorm", None),
            getattr(self, "attention_layerscale", None),
            hidden_states,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            # as Llama does: the attention interface reads packed-sequence boundaries from position_ids
            # (flash-attention's padding-free path)
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states, _ = self._sublayer(
            self.mlp,
            getattr(self, "feedforward_layernorm", None),
            getattr(self, "feedforward_layerscale", None),
            hidden_states,
        )
        return hidden_states


# --------------------------------------------------------------------------------------------------------------------
# Pretrained-model classes
# --------------------------------------------------------------------------------------------------------------------


class _SumGradOverRanks(torch.autograd.Function):
    """Identity forward, all-reduce (sum) of the gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


class FogReplicatedGradSum(TensorParallelLayer):
    """Tensor-parallel style for a replicated parameter used on this rank's heads / neurons only (QK norm gains, DyT
    and xIELU alphas): the gradient of each backward pass is summed over the tensor-parallel group before it is
    accumulated, so gradient accumulation over micro-batches adds each one once. (transformers'
    `replicated_with_grad_allreduce` all-reduces the accumulated `.grad` after every backward pass, which counts
    earlier micro-batches again.)"""

    def install_forward(self, module, mesh):
        original_forward = module.forward
        group = mesh.get_group()

        def forward(*args, **kwargs):
            if not torch.is_grad_enabled():
                return original_forward(*args, **kwargs)
            saved = {name: p for name, p in module.named_parameters(recurse=False) if p.requires_grad}
            for name, param in saved.items():
                module._parameters[name] = _SumGradOverRanks.apply(param, group)
            try:
                return original_forward(*args, **kwargs)
            finally:
                module._parameters.update(saved)

        module.forward = forward
        return module


if torch.distributed.is_available():
    ALL_PARALLEL_STYLES.register("fog_replicated_grad_sum", FogReplicatedGradSum())


class FogPreTrainedModel(PreTrainedModel):
    config: FogConfig
    config_class = FogConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["FogDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # Buffers added by hf_ext.fp8 (delayed-scaling histories) when a converted model was saved.
    _keys_to_ignore_on_load_unexpected = [r"\.fp8_"]
    # `output_hidden_states` / `output_attentions` are recorded by transformers' output-capturing hooks.
    _can_record_outputs = {"hidden_states": FogDecoderLayer, "attentions": FogAttention}

    def __init__(self, config: FogConfig, *inputs, **kwargs):
        # a field assigned after the config was built (`config.x = ...; from_config(config)`) is checked here
        config.check_fields()
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def maybe_distribute_model(cls, model, distributed_config, mesh_manager):
        """transformers' tensor parallelism, after checking that the attention heads split evenly over the ranks."""
        tp_size = getattr(distributed_config, "tp_size", 1) or 1
        if mesh_manager is not None and tp_size > 1:
            cfg = model.config
            for name in ("num_attention_heads", "num_key_value_heads"):
                heads = getattr(cfg, name)
                if heads % tp_size:
                    raise ValueError(
                        f"Tensor parallelism over {tp_size} ranks needs {name} ({heads}) divisible by {tp_size}; "
                        "use a tp_size that divides it."
                    )
        return super().maybe_distribute_model(model, distributed_config, mesh_manager)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Megatron initialisation: N(0, std) for linears and embeddings, N(0, std/sqrt(2L)) for the attention and MLP
        output projections (`scaled_output_init`), norm gains / layer scales at their configured initial value, xIELU
        at its configured alpha_p / alpha_n, DyT alpha at `dyt_alpha_init`."""
        cfg = self.config
        std = cfg.initializer_range
        if isinstance(module, nn.Linear):
            s = (
                std / math.sqrt(2.0 * cfg.num_hidden_layers)
                if (cfg.scaled_output_init and getattr(module, "_fog_residual_output", False))
                else std
            )
            init.normal_(module.weight, mean=0.0, std=s)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, FogRMSNorm | FogLayerScale):
            init.constant_(module.weight, module.init_value)
        elif isinstance(module, FogDyT):
            init.constant_(module.alpha, module.alpha_init)
            init.constant_(module.weight, module.gain_init)
        elif isinstance(module, XIELUActivation):
            init.constant_(module.alpha_p, _inverse_softplus(cfg.xielu_alpha_p_init))
            init.constant_(module.alpha_n, _inverse_softplus(cfg.xielu_alpha_n_init - cfg.xielu_beta))
            init.constant_(module.beta, cfg.xielu_beta)
            init.constant_(module.eps, cfg.xielu_eps)
        elif isinstance(module, FogRotaryEmbedding):
            inv_freq, _ = (
                module.compute_default_rope_parameters(cfg)
                if module.rope_type == "default"
                else (ROPE_INIT_FUNCTIONS[module.rope_type](cfg))
            )
            init.copy_(module.inv_freq, inv_freq)
            init.copy_(module.original_inv_freq, inv_freq)

    def decay_parameter_names(self) -> list[str]:
        """Names of the parameters that get weight decay, as the reference (Megatron) groups them: trainable matrices
        (linear and embedding weights) only; 1-D parameters (norm gains, layer scales, xIELU / DyT scalars), biases
        and frozen tensors get none. `Trainer` subclasses in `hf_ext.fp8` use this instead of `Trainer`'s name
        patterns."""
        return [
            name
            for name, param in self.named_parameters()
            if param.requires_grad and param.ndim >= 2 and not name.endswith(".bias")
        ]

    def optimizer_grouped_parameters(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups as Megatron builds them: frozen parameters (FOG's QK gains) are left out entirely,
        1-D parameters (norm gains, layer scales, xIELU / DyT scalars) and biases get no weight decay.

        Args:
            weight_decay (`float`): Decay for the matrices (linear and embedding weights).

        Returns:
            `list[dict]`: Two groups, `{"params": [...], "weight_decay": weight_decay}` and `{..., 0.0}`.
        """
        decay_names = set(self.decay_parameter_names())
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (decay if name in decay_names else no_decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class FogModel(FogPreTrainedModel):
    """The FOG decoder stack (embeddings x `input_upscale`, decoder layers, optional final norm)."""

    def __init__(self, config: FogConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([FogDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        if config.final_layernorm:
            self.norm = FogRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = FogRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def init_parallel_plans(self) -> None:
        """The config's tensor-parallel plan without the rules for modules this configuration does not build (the
        gate projection of an ungated MLP, the QK norms with `qk_norm="none"`)."""
        super().init_parallel_plans()
        names = {
            ".".join("*" if part.isdigit() else part for part in name.split(".")) for name, _ in self.named_modules()
        }
        self._tp_plan = {key: style for key, style in self._tp_plan.items() if key in names}

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        """Run the decoder. `inputs_embeds`, when given, are also multiplied by `input_upscale` (as the reference
        implementation does), so pass raw embedding-table rows. `output_hidden_states=True` returns the layer-0 input
        (scaled embeddings) and every layer's output (the last one after the final norm when there is one);
        `output_attentions=True` returns each layer's attention probabilities (needs an attention implementation
        that returns them, e.g. `"eager"`); `return_dict=False` returns a tuple."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("FogModel.forward: pass exactly one of input_ids or inputs_embeds.")
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if self.config.input_upscale is not None:
            inputs_embeds = inputs_embeds * self.config.input_upscale
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        if self.config.final_layernorm:
            hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)


class FogForCausalLM(FogPreTrainedModel, GenerationMixin):
    """[`FogModel`] with a language-modelling head (tied to the embeddings when `tie_word_embeddings=True`)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: FogConfig):
        super().__init__(config)
        self.model = FogModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast | tuple:
        """Next-token logits (and the shifted cross-entropy when `labels` are given); `output_hidden_states`,
        `output_attentions` and `return_dict=False` behave as in transformers' own causal LMs."""
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
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @classmethod
    def from_authors_checkpoint(cls, path: str, dtype=None, **kwargs) -> "FogForCausalLM":
        """Load a folder saved by the authors' transformers port (`FOGForCausalLM`, model_type "fog").

        Args:
            path (`str`): Folder with their `config.json` and `model.safetensors` (or sharded safetensors).
            dtype (`torch.dtype | str`, *optional*): Dtype the model is built and loaded in, as `from_pretrained`'s
                `dtype` (`torch.bfloat16`, `"bfloat16"`, ...); `"auto"`: the checkpoint's own (`torch_dtype` / `dtype`
                of its config.json, else that of its weights). Default: float32 (torch's default dtype).
                `torch_dtype=` is accepted as an alias.
            kwargs: Overrides applied to the converted [`FogConfig`].

        Returns:
            [`FogForCausalLM`] with their weights, renamed by [`convert_authors_state_dict`].
        """
        from safetensors.torch import load_file

        if "torch_dtype" in kwargs:
            alias = kwargs.pop("torch_dtype")
            if dtype is not None and alias != dtype:
                raise ValueError("from_authors_checkpoint: pass dtype or torch_dtype (its alias), not both.")
            dtype = alias
        if not os.path.isdir(path):
            raise ValueError(f"from_authors_checkpoint: path={path!r} is not a folder; pass the checkpoint folder.")
        with open(os.path.join(path, "config.json")) as fh:
            raw = json.load(fh)
        config = convert_authors_config(raw, **kwargs)
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise ValueError(f"from_authors_checkpoint: no .safetensors file in {path!r}.")
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(load_file(os.path.join(path, name)))
        if dtype == "auto":
            dtype = raw.get("dtype") or raw.get("torch_dtype")
            if dtype is None:
                dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.get_default_dtype())
        dtype = _resolve_dtype(dtype)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # parameters created in it (as from_pretrained(dtype=...) builds the model)
        try:
            model = cls(config)
        finally:
            torch.set_default_dtype(previous)
        model.config.dtype = dtype
        load_authors_state_dict(model, state)
        return model


def _resolve_dtype(dtype) -> torch.dtype:
    """`None` (torch's default dtype), a floating `torch.dtype` or its name ("bfloat16", "torch.float16")."""
    if dtype is None:
        return torch.get_default_dtype()
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"from_authors_checkpoint: dtype={dtype!r} is not a torch dtype name (e.g. 'bfloat16').")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"from_authors_checkpoint: dtype must be a floating torch dtype or 'auto', got {dtype!r}.")
    return dtype


# --------------------------------------------------------------------------------------------------------------------
# Loading checkpoints written by the authors' transformers port
# --------------------------------------------------------------------------------------------------------------------

_AUTHORS_ACT = {
    "xielu": "xielu",
    "silu": "swiglu",
    "swiglu": "swiglu",
    "smoothswiglu": "smooth_swiglu",
    "gelu": "gelu",
}


# The defaults of the authors' `FOGConfig.__init__`, for fields their config.json may leave out.
_AUTHORS_DEFAULTS = dict(
    vocab_size=131072, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    max_position_embeddings=8192, initializer_range=0.02, pad_token_id=1, bos_token_id=None, eos_token_id=131071,
    tie_word_embeddings=False, attention_bias=False, attention_dropout=0.0, softmax_scale=None, rms_norm_eps=1e-5,
    pre_norm=False, post_norm=True, layerscale=True, final_layernorm=True,
)  # fmt: skip


def convert_authors_config(raw: dict, **overrides) -> FogConfig:
    """Translate the authors' `FOGConfig` fields (`qk_norm: bool`, `qk_type`, `freeze_qk`, `rope_theta`,
    `hidden_act="silu"` for SwiGLU, `input_upscale=1.0` for off) into a [`FogConfig`].

    Args:
        raw (`dict`): Their `config.json` content.
        overrides: [`FogConfig`] fields that win over the converted values.
    """
    if not isinstance(raw, dict):
        raise TypeError(f"convert_authors_config: raw must be the config.json dict, got {type(raw).__name__}.")
    act = raw.get("hidden_act", "xielu")
    if act not in _AUTHORS_ACT:
        raise ValueError(f"convert_authors_config: hidden_act={act!r} has no FOG equivalent ({sorted(_AUTHORS_ACT)}).")
    upscale = raw.get("input_upscale", 1.0)
    qk_norm = raw.get("qk_type", "rms") if raw.get("qk_norm", True) else "none"
    rope = {"rope_type": "default", "rope_theta": float(raw.get("rope_theta", 500000.0))}
    scaling = raw.get("rope_scaling") or raw.get("rope_parameters")
    if isinstance(scaling, dict):
        rope.update({k: v for k, v in scaling.items() if k != "type"})
        rope["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    keys = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "max_position_embeddings", "initializer_range", "rms_norm_eps",
        "tie_word_embeddings", "attention_bias", "attention_dropout", "softmax_scale", "pre_norm", "post_norm",
        "layerscale", "final_layernorm", "bos_token_id", "eos_token_id", "pad_token_id",
    )  # fmt: skip
    # a field missing from their config.json means their class default, not ours
    values = {k: raw[k] if k in raw else _AUTHORS_DEFAULTS[k] for k in keys if k in raw or k in _AUTHORS_DEFAULTS}
    if not values.get("softmax_scale"):  # their attention reads a falsy scale as 1/sqrt(head_dim)
        values["softmax_scale"] = None
    values.update(
        hidden_act=_AUTHORS_ACT[act],
        qk_norm=qk_norm,
        freeze_qk_gain=bool(raw.get("freeze_qk", True)),
        input_upscale=None if upscale in (None, 1, 1.0) else float(upscale),
        rope_parameters=rope,
        # their port does not change the initial values of loaded weights; nothing to reproduce at load time
        scaled_output_init=True,
    )
    values.update(overrides)
    return FogConfig(**values)


_AUTHORS_RENAMES = (
    (re.compile(r"^(model\.layers\.\d+)\.self_attn\.attn_layerscale\.weight$"), r"\1.attention_layerscale.weight"),
    (re.compile(r"^(model\.layers\.\d+)\.mlp\.mlp_layerscale\.weight$"), r"\1.feedforward_layerscale.weight"),
)


def convert_authors_state_dict(state_dict: dict[str, torch.Tensor], config: FogConfig) -> dict[str, torch.Tensor]:
    """Rename a state dict in the authors' module naming to this implementation's.

    Their names match ours except: LayerScale weights live inside the sublayers there
    (`self_attn.attn_layerscale.weight`, `mlp.mlp_layerscale.weight` -> `attention_layerscale.weight`,
    `feedforward_layerscale.weight`); their decoder always holds both norms and `model.norm` even when unused (dropped
    here when the config has no such module); their xIELU stores no `beta` / `eps` buffers (filled from the config);
    their Smooth-SwiGLU module (`ScaledSwiglu`) saves a `mlp.act_fn.scale` buffer that only its unused "delayed" mode
    reads (dropped: ours computes the per-token scale in every forward).

    Args:
        state_dict (`dict[str, torch.Tensor]`): Weights in the authors' naming.
        config ([`FogConfig`]): Config of the target model (e.g. from [`convert_authors_config`]).

    Returns:
        `dict[str, torch.Tensor]`: Weights in [`FogForCausalLM`] naming.
    """
    out: dict[str, torch.Tensor] = {}
    has_norms = config.pre_norm or config.post_norm
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _AUTHORS_RENAMES:
            new = pattern.sub(repl, new)
        if new == "model.norm.weight" and not config.final_layernorm:
            continue
        if not has_norms and re.search(r"\.(attention|feedforward)_layernorm\.weight$", new):
            continue
        if config.hidden_act == "smooth_swiglu" and re.search(r"\.mlp\.act_fn\.scale$", new):
            continue
        if new.startswith("model.") or new.startswith("lm_head."):
            out[new] = value
        else:
            out[f"model.{new}"] = value
    if config.hidden_act == "xielu":
        for i in range(config.num_hidden_layers):
            prefix = f"model.layers.{i}.mlp.act_fn"
            out.setdefault(f"{prefix}.beta", torch.tensor(config.xielu_beta))
            out.setdefault(f"{prefix}.eps", torch.tensor(config.xielu_eps))
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def load_authors_state_dict(model: FogForCausalLM, state_dict: dict[str, torch.Tensor]) -> None:
    """Load weights in the authors' naming into `model`; raise `ValueError` listing missing/unexpected keys."""
    converted = convert_authors_state_dict(state_dict, model.config)
    own = model.state_dict()
    unexpected = sorted(set(converted) - set(own))
    expected = set(own) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    missing = sorted(expected - set(converted))
    if missing or unexpected:
        raise ValueError(
            f"load_authors_state_dict: checkpoint does not match the config (missing {missing[:8]}, unexpected "
            f"{unexpected[:8]}); check that the config.json belongs to these weights."
        )
    # Only a difference in size-1 dimensions is reshaped (a scalar xIELU alpha stored as () or (1,)): a weight of
    # another shape that holds as many elements (e.g. transposed) would otherwise load as a silently scrambled matrix.
    wrong = [
        f"{key} {tuple(value.shape)} (model {tuple(own[key].shape)})"
        for key, value in converted.items()
        if [d for d in value.shape if d != 1] != [d for d in own[key].shape if d != 1]
    ]
    if wrong:
        raise ValueError(
            f"load_authors_state_dict: {len(wrong)} weight(s) have another shape than the config gives "
            f"({', '.join(wrong[:4])}{', ...' if len(wrong) > 4 else ''}); check that the config.json belongs to "
            "these weights."
        )
    with torch.no_grad():
        for key, value in converted.items():
            own[key].copy_(value.to(own[key].dtype).reshape(own[key].shape))
    if model.config.tie_word_embeddings:
        model.tie_weights()


__all__ = [
    "FogForCausalLM",
    "FogModel",
    "FogPreTrainedModel",
    "convert_authors_config",
    "convert_authors_state_dict",
    "load_authors_state_dict",
]
