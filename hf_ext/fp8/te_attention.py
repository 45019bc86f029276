"""FP8 attention through Transformer Engine's `DotProductAttention` (cuDNN fused attention with `fp8_dpa`), plugged
into transformers' attention dispatch.

`convert(model, backend="te", fp8_attention=True)` registers [`te_attention_forward`] with transformers'
`AttentionInterface` (and transformers' SDPA mask format with `AttentionMaskInterface`) under "te_fp8_dpa", switches
the model's attention implementation to it and runs the model under a `DelayedScaling(..., fp8_dpa=True)` recipe:
inside `te.autocast` the two attention BMMs (QKᵀ and PV) then run in FP8 in the forward and both backward passes.

Per attention call, [`te_attention_plan`] decides whether Transformer Engine can run it; otherwise the call goes to
transformers' own SDPA attention in high precision (the same rule as the te backend's GEMMs: FP8 only where shapes
allow). Transformer Engine is imported only when a TE attention module is first built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .convert import te_fp8_shape_ok

TE_ATTENTION_NAME = "te_fp8_dpa"
_CACHE_KEY = "_hf_ext_te_dot_product_attention"
_TE_DTYPES = (torch.bfloat16, torch.float16)
MIN_COMPUTE_CAPABILITY = (9, 0)


def te_attention_plan(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[str, torch.Tensor | None] | None:
    """How Transformer Engine's fused FP8 attention can run one transformers attention call, or `None` if it cannot.

    Args:
        query (`torch.Tensor`): `(batch, heads, q_len, head_dim)`, as transformers passes it.
        key (`torch.Tensor`): `(batch, kv_heads, kv_len, head_dim)` (after any KV-cache update).
        attention_mask (`torch.Tensor`, *optional*): transformers' SDPA-format mask: `None` for a plain causal mask,
            else boolean `(batch, 1, q_len, kv_len)` with `True` = attend.

    Returns:
        `(attn_mask_type, te_mask)` for `te.DotProductAttention.forward`: `("causal", None)`, or
        `("padding_causal", mask)` with `mask` of shape `(batch, 1, 1, kv_len)`, `True` = padded key (TE's
        convention); `None` when the call must run elsewhere:

        - a KV-cache step or chunked prefill (`q_len != kv_len`; TE's fused FP8 attention has no KV-cache path),
        - a token count (`batch * q_len`) that is not a multiple of 8, the te backend's FP8 shape rule
          ([`te_fp8_shape_ok`]), under which that forward runs without FP8 anyway,
        - a head size that is not a multiple of 16 or above 256, Q/K head sizes that differ, dtypes other than
          BF16 / FP16,
        - a mask that is not causal with right padding (left padding as in batched `generate`, packed sequences,
          custom masks, fully padded rows).

    Reading a boolean mask compares it on the device (one host synchronisation per attention call with padding).
    """
    batch, _, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    if q_len != kv_len or not te_fp8_shape_ok(batch * q_len):
        return None
    if head_dim % 16 or head_dim > 256 or key.shape[-1] != head_dim or query.dtype not in _TE_DTYPES:
        return None
    if attention_mask is None:
        return "causal", None
    if (
        attention_mask.dtype != torch.bool
        or attention_mask.dim() != 4
        or attention_mask.shape[1] != 1
        or tuple(attention_mask.shape[-2:]) != (q_len, kv_len)
    ):
        return None
    allowed = attention_mask[:, 0].expand(batch, q_len, kv_len)
    # transformers' causal+padding mask: query i attends key j iff j <= i and key j is a real token; the last query
    # row therefore lists every real key
    real = allowed[:, -1, :]
    causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=allowed.device).tril()
    right_padded = (real[:, 1:] <= real[:, :-1]).all() & real[:, 0].all()
    if not bool(right_padded & torch.equal(allowed, causal & real[:, None, :])):
        return None
    if bool(real.all()):
        return "causal", None
    return "padding_causal", ~real[:, None, None, :]


def te_dot_product_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, scaling: float | None):
    """The `te.DotProductAttention` of one attention layer, built on first use and cached on `module`.

    One per layer (TE keeps per-module FP8 scaling state): `num_attention_heads` / `num_gqa_groups` from the query /
    key head counts, `kv_channels` = head size, `softmax_scale` = the layer's `scaling`, `attention_dropout` = the
    layer's `attention_dropout` (TE applies it only in training mode, which follows `module.training`),
    `qkv_format="bshd"`. It is stored outside the module tree (not a registered submodule), so state dicts,
    `save_pretrained` files and checkpoints are unchanged; its FP8 scaling history therefore restarts after a
    resume (the GEMMs' `te.Linear` histories are checkpointed).
    """
    dpa = module.__dict__.get(_CACHE_KEY)
    if dpa is None:
        from .convert import _import_te

        te = _import_te()
        layer_idx = getattr(module, "layer_idx", None)
        dpa = te.DotProductAttention(
            num_attention_heads=query.shape[1],
            kv_channels=query.shape[-1],
            num_gqa_groups=key.shape[1],
            attention_dropout=float(getattr(module, "attention_dropout", 0.0) or 0.0),
            qkv_format="bshd",
            attn_mask_type="causal",
            softmax_scale=scaling,
            layer_number=None if layer_idx is None else int(layer_idx) + 1,
        )
        module.__dict__[_CACHE_KEY] = dpa
    dpa.train(module.training)
    return dpa


def build_te_attention_forward(
    dot_product_attention: Callable[[nn.Module, torch.Tensor, torch.Tensor, float | None], Callable],
) -> Callable:
    """A transformers attention function running each call through the kernel `dot_product_attention(module, query,
    key, scaling)` returns, which must follow `te.DotProductAttention.forward`'s contract (Q/K/V in "bshd", keyword
    `attn_mask_type` "causal" / "padding_causal", `attention_mask` with `True` = padded key, output
    `(batch, seq, heads * head_dim)`). [`te_attention_forward`] uses [`te_dot_product_attention`]; another factory
    plugs in another kernel with the same contract.

    Calls that [`te_attention_plan`] rejects, and calls asking for `output_attentions`, go to transformers' SDPA
    attention instead."""

    def attention_forward(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        modifiers = [name for name in ("softcap", "s_aux") if kwargs.get(name) is not None]
        if modifiers:  # neither TE's fused attention nor the SDPA fallback applies them: the result would be wrong
            raise ValueError(
                f"Transformer Engine FP8 attention ({TE_ATTENTION_NAME!r}) cannot run this model's attention, which "
                f"uses {' and '.join(modifiers)} (Gemma 2's logit softcapping, attention sinks): convert it without "
                "fp8_attention, or with backend='emulated', fp8_attention=True (which applies them)."
            )
        plan = None if kwargs.get("output_attentions") else te_attention_plan(query, key, attention_mask)
        if plan is None:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        mask_type, te_mask = plan
        batch, heads, seq, _ = query.shape
        kernel = dot_product_attention(module, query, key, scaling)
        q, k, v = (t.transpose(1, 2).contiguous() for t in (query, key, value))  # bhsd -> bshd
        out = kernel(q, k, v, attention_mask=te_mask, attn_mask_type=mask_type, qkv_format="bshd")
        return out.reshape(batch, seq, heads, value.shape[-1]), None

    attention_forward.__doc__ = (
        "transformers attention function (query/key/value `(batch, heads, seq, head_dim)`, output "
        "`(batch, seq, heads, head_dim)`) backed by a Transformer Engine style `DotProductAttention`."
    )
    return attention_forward


te_attention_forward = build_te_attention_forward(te_dot_product_attention)
"""transformers attention function running FP8 attention through one `te.DotProductAttention` per layer; registered
as "te_fp8_dpa" by [`register_te_attention`]."""


def register_te_attention() -> str:
    """Register [`te_attention_forward`] under "te_fp8_dpa" with transformers' `AttentionInterface`, and transformers'
    SDPA mask builder under the same name with `AttentionMaskInterface` (a plain causal batch then gets no mask at
    all, a padded one a boolean mask). Needs neither CUDA nor Transformer Engine; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(TE_ATTENTION_NAME, te_attention_forward)
    AttentionMaskInterface.register(TE_ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return TE_ATTENTION_NAME


def check_te_attention_available() -> None:
    """Raise early unless Transformer Engine FP8 attention can run here: a CUDA GPU of compute capability 9.0+
    (Hopper or newer; cuDNN's FP8 fused attention) and NVIDIA Transformer Engine installed.

    Raises:
        `ValueError`: no CUDA device, or one older than compute capability 9.0.
        `ImportError`: Transformer Engine is not installed.
    """
    need = (
        "convert(backend='te', fp8_attention=True) runs the attention BMMs in FP8 with Transformer Engine's "
        "DotProductAttention (cuDNN FP8 fused attention); it needs a CUDA GPU of compute capability 9.0+ (Hopper or "
        "newer) and NVIDIA Transformer Engine (`pip install transformer-engine[pytorch]`)."
    )
    alternative = (
        " Use backend='emulated' with fp8_attention=True for the pure-torch FP8 attention, or drop fp8_attention."
    )
    if not torch.cuda.is_available():
        raise ValueError(f"{need} No CUDA device is available here.{alternative}")
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{need} Transformer Engine is not installed.{alternative}") from err
    capability = torch.cuda.get_device_capability()
    if tuple(capability) < MIN_COMPUTE_CAPABILITY:
        raise ValueError(
            f"{need} This GPU ({torch.cuda.get_device_name()}) has compute capability "
            f"{capability[0]}.{capability[1]}.{alternative}"
        )
