"""Issue 15 item 1: FOG's frozen QK-RMS gains stay frozen in every loading path (they are buffers, not parameters)."""

import json

import pytest
import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def _gains(model):
    return [t for layer in model.model.layers for t in (layer.self_attn.q_norm.weight, layer.self_attn.k_norm.weight)]


def _one_adamw_step_moves_nothing_frozen(model):
    model.train()
    before = [g.clone() for g in _gains(model)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-1, weight_decay=0.1)
    ids = torch.randint(0, 128, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for b, g in zip(before, _gains(model)):
        assert torch.equal(b, g)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.endswith(("q_norm.weight", "k_norm.weight")) for n in names)


@pytest.mark.parametrize("loader", ["class", "auto"])
def test_frozen_qk_gain_survives_from_pretrained(tmp_path, loader):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = FogForCausalLM(FogConfig.fog(**TINY, intermediate_size=96))
    model.save_pretrained(tmp_path)
    cls = FogForCausalLM if loader == "class" else AutoModelForCausalLM
    reloaded = cls.from_pretrained(tmp_path)
    assert all(torch.equal(g, torch.ones_like(g)) for g in _gains(reloaded))
    _one_adamw_step_moves_nothing_frozen(reloaded)


def test_frozen_qk_gain_loaded_from_old_checkpoint_value(tmp_path):
    """A checkpoint that stored the gain (older hf_ext, the authors' port) still loads, value included."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    cfg = FogConfig.fog(**TINY, intermediate_size=96, qk_norm_init=1.0)
    FogForCausalLM(cfg).save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert "model.layers.0.self_attn.q_norm.weight" in state  # still written, so older readers keep working
    state["model.layers.0.self_attn.q_norm.weight"] = torch.full((16,), 2.0)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    reloaded = FogForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded.model.layers[0].self_attn.q_norm.weight, torch.full((16,), 2.0))
    _one_adamw_step_moves_nothing_frozen(reloaded)


def test_frozen_qk_gain_authors_checkpoint_path(tmp_path):
    from safetensors.torch import save_file

    raw = {
        "model_type": "fog", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0, "softmax_scale": 0.125,
        "input_upscale": 50.0, "freeze_qk": True, "tie_word_embeddings": False, "final_layernorm": False,
        "pre_norm": False, "post_norm": True, "layerscale": True, "hidden_act": "xielu", "qk_norm": True,
    }  # fmt: skip
    torch.manual_seed(0)
    from hf_ext.models.fog import convert_authors_config

    source = FogForCausalLM(convert_authors_config(raw))
    state = {k: v.contiguous() for k, v in source.state_dict().items() if not k.endswith((".beta", ".eps"))}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    save_file(state, str(tmp_path / "model.safetensors"))
    loaded = FogForCausalLM.from_authors_checkpoint(str(tmp_path))
    _one_adamw_step_moves_nothing_frozen(loaded)


def test_trainable_qk_gain_when_not_frozen():
    model = FogForCausalLM(FogConfig.fog(**TINY, intermediate_size=96, freeze_qk_gain=False))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.layers.0.self_attn.q_norm.weight" in names and "model.layers.0.self_attn.k_norm.weight" in names
