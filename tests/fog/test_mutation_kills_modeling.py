"""FOG modelling behaviours checked against closed forms: degenerate Smooth-SwiGLU inputs, RoPE attention factor,
dropout and cache handling, initial values, optimizer groups, config validation and the authors'-checkpoint loader."""

import json
import math

import pytest
import torch
from transformers import DynamicCache

from hf_ext.models.fog import (
    FogConfig,
    FogForCausalLM,
    convert_authors_config,
    convert_authors_state_dict,
    load_authors_state_dict,
)

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


# ------------------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("act", ["smooth_swiglu", "smooth_swiglu_product"])
def test_smooth_swiglu_maps_an_all_zero_token_to_zero(act):
    """A token whose MLP input is all zero has a zero per-token max; SwiGLU(0) = 0, so both Smooth-SwiGLU forms must
    give 0 there (not 0/0 = NaN). With zero input embeddings every sublayer of a FOG block (no pre-norm, QK-RMSNorm,
    post-norm, no biases) outputs exactly 0, so that token's logits are exactly 0 and every other token stays finite."""
    torch.manual_seed(0)
    model = FogForCausalLM(FogConfig.fog(**TINY, hidden_act=act)).eval()
    embeds = torch.randn(1, 4, 32) * 0.02
    embeds[0, 0] = 0.0
    with torch.no_grad():
        logits = model(inputs_embeds=embeds, use_cache=False).logits
    assert torch.isfinite(logits).all()
    assert torch.equal(logits[0, 0], torch.zeros(64))


def test_rotary_tables_carry_the_rope_attention_factor():
    """RoPE types with an attention factor (YaRN's `attention_factor`) scale both cos and sin by it."""
    rope = {"rope_type": "yarn", "factor": 2.0, "rope_theta": 500000.0, "attention_factor": 1.5,
            "original_max_position_embeddings": 2048}  # fmt: skip
    rotary = FogForCausalLM(FogConfig.fog(**TINY, rope_parameters=rope)).model.rotary_emb
    positions = torch.arange(5)
    cos, sin = rotary(torch.zeros(1, 5, 32), positions[None])
    angles = positions[:, None].double() * rotary.inv_freq.double()[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    torch.testing.assert_close(cos[0].double(), 1.5 * angles.cos(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sin[0].double(), 1.5 * angles.sin(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_dropout_acts_in_training_only(attn):
    """In eval mode a model with `attention_dropout=0.5` gives the logits of the same weights without dropout."""
    torch.manual_seed(0)
    model = FogForCausalLM._from_config(FogConfig.fog(**TINY, attention_dropout=0.5), attn_implementation=attn)
    plain = FogForCausalLM._from_config(FogConfig.fog(**TINY), attn_implementation=attn)
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, plain.eval()(ids).logits)
        torch.manual_seed(2)
        a = model.train()(ids).logits
        b = model(ids).logits
    assert not torch.equal(a, b)  # dropout does act in training


def test_use_cache_false_returns_no_cache_even_when_one_is_passed():
    torch.manual_seed(0)
    model = FogForCausalLM(FogConfig.fog(**TINY)).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 64, (1, 5)), cache=DynamicCache(config=model.config), use_cache=False)
    assert out.cache is None


# ----------------------------------------------------------------------------------------------- initial values
def test_biases_start_at_zero_and_embeddings_at_the_initializer_range():
    """Megatron's initialisation: every linear bias zero, embedding rows N(0, initializer_range)."""
    torch.manual_seed(0)
    cfg = FogConfig.fog(**{**TINY, "vocab_size": 256}, attention_bias=True, mlp_bias=True, initializer_range=0.05)
    model = FogForCausalLM(cfg)
    biases = [(n, p) for n, p in model.named_parameters() if n.endswith(".bias")]
    assert len(biases) == 2 * 6  # q, k, v, o, up, down per layer
    for name, bias in biases:
        assert torch.equal(bias, torch.zeros_like(bias)), name
    std = model.model.embed_tokens.weight.std().item()  # 8192 samples: standard error ~0.8%
    assert std == pytest.approx(0.05, rel=0.05)


def test_pre_norm_gains_start_at_one_while_layer_scales_start_at_one_over_sqrt_depth():
    cfg = FogConfig.llama_baseline(**{**TINY, "num_hidden_layers": 4}, layerscale=True)
    for layer in FogForCausalLM(cfg).model.layers:
        for norm in (layer.attention_layernorm, layer.feedforward_layernorm):
            assert torch.equal(norm.weight.detach(), torch.ones(32))
        for scale in (layer.attention_layerscale, layer.feedforward_layerscale):
            torch.testing.assert_close(scale.weight.detach(), torch.full((32,), 0.5))


def test_padding_token_embedding_gets_no_gradient():
    """As `nn.Embedding(padding_idx=pad_token_id)` in transformers' decoders: the padding row is not trained."""
    torch.manual_seed(0)
    model = FogForCausalLM(FogConfig.fog(**TINY, pad_token_id=3))
    ids = torch.tensor([[5, 3, 7, 3, 9]])
    model(ids, labels=ids).loss.backward()
    grad = model.model.embed_tokens.weight.grad
    assert torch.equal(grad[3], torch.zeros(32))
    assert grad[5].abs().sum() > 0


# ------------------------------------------------------------------------------------------------ optimizer groups
def test_parameters_frozen_by_the_user_are_in_no_optimizer_group():
    torch.manual_seed(0)
    model = FogForCausalLM(FogConfig.fog(**TINY))
    model.model.embed_tokens.weight.requires_grad_(False)
    model.model.layers[0].attention_layernorm.weight.requires_grad_(False)
    decay, free = model.optimizer_grouped_parameters(0.1)
    assert (decay["weight_decay"], free["weight_decay"]) == (0.1, 0.0)
    grouped = [id(p) for p in decay["params"] + free["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    assert id(model.model.embed_tokens.weight) not in grouped
    assert id(model.model.layers[0].attention_layernorm.weight) not in grouped


# ------------------------------------------------------------------------------------------------ config validation
@pytest.mark.parametrize(
    "field, value",
    [
        ("head_dim", 15),  # rotary embeddings rotate pairs
        ("attention_dropout", 1.0),
        ("xielu_alpha_p_init", 0.0),  # softplus^-1(0) = -inf
        ("xielu_alpha_n_init", 0.5),  # equal to xielu_beta: softplus^-1(0) = -inf
        ("xielu_alpha_p_init", 1e39),  # beyond float32
        ("qk_norm_init", None),
        ("num_key_value_heads", True),  # a bool is not a head count
    ],
)
def test_invalid_fields_are_refused_at_config_time(field, value):
    with pytest.raises(ValueError, match=field):
        FogConfig.fog(**{**TINY, field: value})


def test_an_explicit_intermediate_size_wins_over_the_swiglu_width():
    cfg = FogConfig.fog(**TINY, swiglu_intermediate_size=100)
    assert cfg.intermediate_size == 48


# -------------------------------------------------------------------------------------------- authors' checkpoints
def test_converting_authors_weights_fills_xielu_constants_from_the_config():
    """Their xIELU stores no beta / eps: the converted state takes the config's values (not the defaults)."""
    cfg = FogConfig.fog(**TINY, xielu_beta=0.3, xielu_eps=-1e-4)
    out = convert_authors_state_dict({}, cfg)
    for i in range(2):
        assert out[f"model.layers.{i}.mlp.act_fn.beta"].item() == pytest.approx(0.3)
        assert out[f"model.layers.{i}.mlp.act_fn.eps"].item() == pytest.approx(-1e-4)


def test_converting_authors_weights_renames_prefixes_and_drops_unused_tensors():
    t = torch.zeros(2)
    tied = FogConfig.fog(**TINY, tie_word_embeddings=True)
    assert "lm_head.weight" not in convert_authors_state_dict({"lm_head.weight": t}, tied)
    # keys of their base model (no "model." prefix) are placed under "model."
    out = convert_authors_state_dict({"embed_tokens.weight": t, "layers.0.self_attn.q_proj.weight": t}, tied)
    assert {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"} <= set(out)
    # their decoder always holds both norms; a norm-free config has neither
    bare = FogConfig.fog(**TINY, post_norm=False, layerscale=False)
    keys = {"model.layers.0.attention_layernorm.weight": t, "model.layers.0.feedforward_layernorm.weight": t}
    assert not any("layernorm" in k for k in convert_authors_state_dict(keys, bare))


def test_loading_authors_weights_without_the_untied_head_is_refused():
    torch.manual_seed(0)
    cfg = FogConfig.fog(**TINY)
    state = {k: v for k, v in FogForCausalLM(cfg).state_dict().items() if not k.endswith((".beta", ".eps"))}
    state.pop("lm_head.weight")
    with pytest.raises(ValueError, match="lm_head"):
        load_authors_state_dict(FogForCausalLM(cfg), state)


def _authors_folder(path, weight_dtype, **raw_extra):
    from safetensors.torch import save_file

    raw = {**TINY, "model_type": "fog", "softmax_scale": 0.125, "final_layernorm": False, "input_upscale": 50.0,
           **raw_extra}  # fmt: skip
    model = FogForCausalLM(convert_authors_config(raw))
    state = {k: v.to(weight_dtype).contiguous() for k, v in model.state_dict().items()
             if not k.endswith((".beta", ".eps"))}  # fmt: skip
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(raw))
    return str(path)


def test_auto_dtype_reads_torch_dtype_of_the_config_then_the_weights(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    named = _authors_folder(tmp_path / "a", torch.float32, torch_dtype="float16")
    model = FogForCausalLM.from_authors_checkpoint(named, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    unnamed = _authors_folder(tmp_path / "b", torch.bfloat16)
    model = FogForCausalLM.from_authors_checkpoint(unnamed, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_dtype_and_a_different_torch_dtype_alias_are_refused(tmp_path):
    folder = _authors_folder(tmp_path, torch.float32)
    with pytest.raises(ValueError, match="torch_dtype"):
        FogForCausalLM.from_authors_checkpoint(folder, dtype=torch.float16, torch_dtype="bfloat16")
    assert math.isfinite(FogForCausalLM.from_authors_checkpoint(folder, dtype="float16", torch_dtype="float16")
                         .lm_head.weight.float().sum().item())  # fmt: skip
