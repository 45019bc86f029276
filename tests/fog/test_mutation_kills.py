"""FOG forward, initialisation, presets and authors'-checkpoint config against independent references.

The logits of `FogForCausalLM` (every parameter and gain randomised, float64) are compared with a float64 forward
written here from the spec (research notes §1.3 and the reference code's block): optional input up-scaling, per layer
QKV without pre-norm (FOG) or with it (baseline), per-head QK RMSNorm / DyT *before* RoPE (RoPE rotating the pairs
(i, i + d/2) by m * theta^(-2i/d), theta = 500000), grouped-query attention where query head h reads KV head
h // (heads / kv_heads), causal softmax with the configured scale, output projection, post-norm (or LayerScale) and
the residual add, then the MLP (xIELU, exact GELU, tanh GELU or SwiGLU; Smooth-SwiGLU equals SwiGLU in exact
arithmetic), an optional final norm and the LM head. Initial values, presets and the conversion of the authors'
config are checked against closed forms and the reference's defaults.
"""

import math

import pytest
import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM, convert_authors_config

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
THETA = 500_000.0  # reference default (rope_theta of the authors' config and of submit.sh)
# The model computes RMSNorm and the eager softmax in float32 whatever the input dtype (as Llama and the authors' port
# do), so a float64 model agrees with the float64 reference to ~1e-7 only; a large `rms_norm_eps` keeps the epsilon's
# effect far above that tolerance.
TOL = dict(rtol=1e-5, atol=1e-5)
REF = dict(TINY, rms_norm_eps=1e-2)


# ----------------------------------------------------------------------------------------------- float64 reference
def _rms(t, gain, eps):
    return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + eps) * gain


def _xielu(x, raw_p, raw_n, beta=0.5, eps=-1e-6):
    a_p = torch.log1p(torch.exp(raw_p))  # softplus
    a_n = beta + torch.log1p(torch.exp(raw_n))
    neg = a_n * (torch.exp(torch.clamp(x, max=eps)) - 1.0) - a_n * x + beta * x
    return torch.where(x > 0, a_p * x * x + beta * x, neg)


def _rope(t, positions, d):
    """Rotate each pair (t[i], t[i + d/2]) by the angle position * THETA^(-2i/d)."""
    inv = THETA ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = positions[:, None].double() * inv[None, :]
    c, s = torch.cos(ang), torch.sin(ang)
    a, b = t[..., : d // 2], t[..., d // 2 :]
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


def reference_logits(sd, cfg, ids=None, embeds=None):
    H, nh, nkv, L = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers
    d = H // nh
    eps = cfg.rms_norm_eps
    x = sd["model.embed_tokens.weight"][ids] if embeds is None else embeds
    if cfg.input_upscale is not None:
        x = x * cfg.input_upscale
    B, T, _ = x.shape
    pos = torch.arange(T)
    scale = cfg.softmax_scale if cfg.softmax_scale is not None else 1.0 / math.sqrt(d)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(L):
        p = f"model.layers.{i}."
        g_att, g_ff = sd.get(p + "attention_layernorm.weight"), sd.get(p + "feedforward_layernorm.weight")
        # ---- attention
        inp = _rms(x, g_att, eps) if cfg.pre_norm else x
        q = (inp @ sd[p + "self_attn.q_proj.weight"].T).view(B, T, nh, d).transpose(1, 2)
        k = (inp @ sd[p + "self_attn.k_proj.weight"].T).view(B, T, nkv, d).transpose(1, 2)
        v = (inp @ sd[p + "self_attn.v_proj.weight"].T).view(B, T, nkv, d).transpose(1, 2)
        if cfg.qk_norm == "rms":
            q = _rms(q, sd[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, sd[p + "self_attn.k_norm.weight"], eps)
        elif cfg.qk_norm == "dyt":
            q = sd[p + "self_attn.q_norm.weight"] * torch.tanh(sd[p + "self_attn.q_norm.alpha"] * q)
            k = sd[p + "self_attn.k_norm.weight"] * torch.tanh(sd[p + "self_attn.k_norm.alpha"] * k)
        q, k = _rope(q, pos, d), _rope(k, pos, d)
        group = torch.tensor([h // (nh // nkv) for h in range(nh)])
        k, v = k[:, group], v[:, group]
        logits = scale * q @ k.transpose(-1, -2)
        probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
        a = (probs @ v).transpose(1, 2).reshape(B, T, nh * d) @ sd[p + "self_attn.o_proj.weight"].T
        if cfg.post_norm:
            a = _rms(a, g_att, eps)
        elif cfg.layerscale:
            a = a * sd[p + "attention_layerscale.weight"]
        x = x + a
        # ---- MLP
        inp = _rms(x, g_ff, eps) if cfg.pre_norm else x
        if cfg.mlp_alpha is not None:
            inp = inp * cfg.mlp_alpha
        u = inp @ sd[p + "mlp.up_proj.weight"].T
        act = cfg.hidden_act
        if act == "xielu":
            h = _xielu(u, sd[p + "mlp.act_fn.alpha_p"], sd[p + "mlp.act_fn.alpha_n"])
        elif act == "gelu":
            h = 0.5 * u * (1.0 + torch.erf(u / math.sqrt(2.0)))
        elif act == "gelu_tanh":
            h = 0.5 * u * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u**3)))
        else:  # swiglu, smooth_swiglu, smooth_swiglu_product: equal in exact arithmetic
            g = inp @ sd[p + "mlp.gate_proj.weight"].T
            h = g / (1.0 + torch.exp(-g)) * u
        m = h @ sd[p + "mlp.down_proj.weight"].T
        if cfg.post_norm:
            m = _rms(m, g_ff, eps)
        elif cfg.layerscale:
            m = m * sd[p + "feedforward_layerscale.weight"]
        x = x + m
    if cfg.final_layernorm:
        x = _rms(x, sd["model.norm.weight"], eps)
    head = sd["model.embed_tokens.weight"] if cfg.tie_word_embeddings else sd["lm_head.weight"]
    return x @ head.T


def _randomised(cfg, attn="eager"):
    """A float64 model whose every weight, gain (frozen ones included), layer scale and xIELU / DyT scalar is random,
    so that no initial value (unit gains, alpha = 1, equal alphas) can hide a wrong formula."""
    torch.manual_seed(0)
    model = FogForCausalLM._from_config(cfg, attn_implementation=attn).double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("act_fn.beta", "act_fn.eps")):
                continue
            if name.endswith(("act_fn.alpha_p", "act_fn.alpha_n")):
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.7)
            elif t.ndim == 1 or name.endswith(".alpha"):  # gains, layer scales, DyT alpha
                t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype))
            elif name == "model.embed_tokens.weight":
                std = 0.02 if cfg.input_upscale is not None else 1.0
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * std)
            else:
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) / math.sqrt(t.shape[1]))
    return model


CASES = {
    "fog": (FogConfig.fog, dict(intermediate_size=48)),
    "fog_dyt_trainable_gelu_mlp_alpha": (
        FogConfig.fog,
        dict(intermediate_size=48, qk_norm="dyt", freeze_qk_gain=False, hidden_act="gelu", mlp_alpha=0.7),
    ),
    "fog_trainable_rms_smooth_swiglu_tied": (
        FogConfig.fog,
        dict(intermediate_size=32, freeze_qk_gain=False, hidden_act="smooth_swiglu", tie_word_embeddings=True),
    ),
    "fog_gelu_tanh_no_upscale_scale_0.3": (
        FogConfig.fog,
        dict(intermediate_size=48, hidden_act="gelu_tanh", input_upscale=None, softmax_scale=0.3),
    ),
    "llama_layerscale": (FogConfig.llama_baseline, dict(intermediate_size=32, layerscale=True)),
    "llama_smooth_product_qk_rms": (
        FogConfig.llama_baseline,
        dict(intermediate_size=32, hidden_act="smooth_swiglu_product", qk_norm="rms", freeze_qk_gain=False),
    ),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_float64_reference_block(case, attn):
    make, kw = CASES[case]
    cfg = make(**REF, **kw)
    model = _randomised(cfg, attn)
    ids = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(ids, use_cache=False).logits
    ref = reference_logits(sd, cfg, ids=ids)
    assert ref.abs().max() > 1e-2  # a non-trivial comparison
    torch.testing.assert_close(out, ref, **TOL)


def test_user_inputs_embeds_are_upscaled_as_in_the_reference():
    """The reference multiplies `inputs_embeds` passed by the user by `input_upscale` too."""
    cfg = FogConfig.fog(**REF, intermediate_size=48)
    model = _randomised(cfg)
    emb = torch.randn(2, 5, cfg.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.02
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(inputs_embeds=emb, use_cache=False).logits
    torch.testing.assert_close(out, reference_logits(sd, cfg, embeds=emb), **TOL)


# --------------------------------------------------------------------------------------------------- initial values
def test_initial_values_follow_the_configured_closed_forms():
    cfg = FogConfig.fog(**TINY, intermediate_size=48, xielu_alpha_p_init=1.3, xielu_alpha_n_init=0.9)
    act = FogForCausalLM(cfg).model.layers[1].mlp.act_fn
    alpha_p = math.log1p(math.exp(act.alpha_p.item()))
    alpha_n = 0.5 + math.log1p(math.exp(act.alpha_n.item()))
    assert alpha_p == pytest.approx(1.3, abs=1e-6) and alpha_n == pytest.approx(0.9, abs=1e-6)

    dyt = FogForCausalLM(FogConfig.fog(**TINY, intermediate_size=48, qk_norm="dyt", dyt_alpha_init=0.7))
    for name in ("q_norm", "k_norm"):
        assert getattr(dyt.model.layers[0].self_attn, name).alpha.item() == pytest.approx(0.7)

    # post-norm gains are 1/sqrt(L) only as LayerScale (`--layernorm-init`); a plain post-norm starts at 1
    L = 4
    plain = FogForCausalLM(FogConfig.fog(**{**TINY, "num_hidden_layers": L}, intermediate_size=48, layerscale=False))
    scaled = FogForCausalLM(FogConfig.fog(**{**TINY, "num_hidden_layers": L}, intermediate_size=48))
    for layer in plain.model.layers:
        assert torch.all(layer.attention_layernorm.weight == 1) and torch.all(layer.feedforward_layernorm.weight == 1)
        assert not hasattr(layer, "attention_layerscale")
    for layer in scaled.model.layers:
        torch.testing.assert_close(layer.feedforward_layernorm.weight.detach(), torch.full((32,), 1 / math.sqrt(L)))


# ---------------------------------------------------------------------------------------------------------- presets
def test_presets_widths_and_head_defaults():
    # the reference's ungated width is 3 * F / 2 for its sizes (submit.sh); gated presets keep the SwiGLU width
    for swiglu, ungated in ((4096, 6144), (8192, 12288), (14336, 21504)):
        assert FogConfig.fog(**TINY, swiglu_intermediate_size=swiglu).intermediate_size == ungated
        assert FogConfig.fog(**TINY, hidden_act="gelu", swiglu_intermediate_size=swiglu).intermediate_size == ungated
    for act in ("swiglu", "smooth_swiglu"):
        assert FogConfig.fog(**TINY, hidden_act=act, swiglu_intermediate_size=100).intermediate_size == 100
    odd = FogConfig.fog(**TINY, swiglu_intermediate_size=100).intermediate_size
    assert odd % 16 == 0 and abs(odd - 150) < 16
    # num_key_value_heads=None is multi-head attention
    mha = FogConfig.fog(**{**TINY, "num_key_value_heads": None}, intermediate_size=48)
    assert mha.num_key_value_heads == 4
    assert FogForCausalLM(mha).model.layers[0].self_attn.k_proj.out_features == 32
    assert FogConfig.fog(**TINY).rope_parameters["rope_theta"] == THETA


# --------------------------------------------------------------------------------------------- authors' config.json
AUTHORS = {
    "model_type": "fog", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0, "softmax_scale": 0.125,
    "pre_norm": False, "post_norm": True, "layerscale": True, "final_layernorm": False, "input_upscale": 50.0,
}  # fmt: skip


def test_authors_config_fields_map_to_ours():
    # their defaults: freeze_qk=True, qk_type="rms", qk_norm=True
    cfg = convert_authors_config(dict(AUTHORS))
    assert (cfg.qk_norm, cfg.freeze_qk_gain, cfg.input_upscale) == ("rms", True, 50.0)
    cfg = convert_authors_config({**AUTHORS, "qk_type": "dyt", "freeze_qk": False, "input_upscale": 1.0})
    assert (cfg.qk_norm, cfg.freeze_qk_gain, cfg.input_upscale) == ("dyt", False, None)
    assert convert_authors_config({**AUTHORS, "qk_norm": False}).qk_norm == "none"
    # their "smoothswiglu" is Megatron's scaled_swiglu: the linear branch divided by max|gate| per token
    assert convert_authors_config({**AUTHORS, "hidden_act": "smoothswiglu"}).hidden_act == "smooth_swiglu"
    assert convert_authors_config({**AUTHORS, "hidden_act": "silu"}).hidden_act == "swiglu"
    # their rope_scaling (transformers 4.x naming) becomes rope_parameters
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 1024}  # fmt: skip
    cfg = convert_authors_config({**AUTHORS, "rope_scaling": llama3, "max_position_embeddings": 4096})
    assert cfg.rope_parameters["rope_type"] == "llama3" and cfg.rope_parameters["factor"] == 8.0
    assert cfg.rope_parameters["rope_theta"] == THETA
    rotary = FogForCausalLM(cfg).model.rotary_emb
    d = 8
    plain = THETA ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    assert not torch.allclose(rotary.inv_freq.double(), plain)  # the scaling acts on the frequencies


def test_fields_missing_from_the_authors_config_take_their_class_defaults():
    """A hand-written or trimmed authors' config.json without `softmax_scale`, `final_layernorm` or
    `max_position_embeddings` used to get FogConfig's defaults (0.125, False, 4096) instead of the authors'
    `FOGConfig.__init__` defaults (None = 1/sqrt(head_dim), True, 8192)."""
    small = {"vocab_size": 50, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
             "num_attention_heads": 4}  # fmt: skip
    cfg = convert_authors_config(small)
    assert (cfg.softmax_scale, cfg.final_layernorm, cfg.max_position_embeddings) == (None, True, 8192)
    assert (cfg.pre_norm, cfg.post_norm, cfg.layerscale, cfg.tie_word_embeddings) == (False, True, True, False)
    assert (cfg.rms_norm_eps, cfg.pad_token_id, cfg.eos_token_id) == (1e-5, 1, 131071)
    assert FogForCausalLM(cfg).model.layers[0].self_attn.scaling == pytest.approx(8**-0.5)
    assert convert_authors_config({**small, "softmax_scale": 0}).softmax_scale is None  # falsy: their default
    assert convert_authors_config({**small, "final_layernorm": False}).final_layernorm is False
