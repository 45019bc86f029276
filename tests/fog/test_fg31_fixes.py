"""Fixes of audit pass 31 (fg31) in the FOG model."""

import json

import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=64)


def test_authors_smooth_swiglu_checkpoint_with_the_scale_buffer_loads(tmp_path):
    """F1: the authors' `ScaledSwiglu` registers a persistent `scale` buffer, so their smoothswiglu checkpoints hold
    `model.layers.<i>.mlp.act_fn.scale`; it was refused as an unexpected key."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = FogForCausalLM(FogConfig.fog(hidden_act="smooth_swiglu", input_upscale=None, **TINY)).eval()
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    for i in range(TINY["num_hidden_layers"]):
        state[f"model.layers.{i}.mlp.act_fn.scale"] = torch.tensor(1.0)
    raw = {**TINY, "model_type": "fog", "hidden_act": "smoothswiglu", "qk_norm": True, "freeze_qk": True,
           "softmax_scale": 0.125, "final_layernorm": False, "input_upscale": 1.0}  # fmt: skip
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded = FogForCausalLM.from_authors_checkpoint(str(tmp_path)).eval()
    assert loaded.config.hidden_act == "smooth_swiglu"
    ids = torch.randint(0, TINY["vocab_size"], (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, source(ids).logits, rtol=0, atol=0)
