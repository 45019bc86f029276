"""Fixes of audit pass 38 (fg45) in the FOG model."""

import pytest
import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM, load_authors_state_dict

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def _authors_state(model):
    """The model's weights as the authors' port stores them (no xIELU beta / eps buffers)."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith((".beta", ".eps"))}


def test_an_authors_weight_of_another_shape_with_as_many_elements_is_refused():
    """A weight stored transposed (48 x 32 in place of 32 x 48) was reshaped into the model's shape: a scrambled matrix
    loaded without a word."""
    torch.manual_seed(0)
    cfg = FogConfig.fog(**TINY)
    state = _authors_state(FogForCausalLM(cfg))
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"].t().contiguous()
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight \(32, 48\) \(model \(48, 32\)\)"):
        load_authors_state_dict(FogForCausalLM(cfg), state)


def test_an_authors_weight_of_another_size_is_refused_naming_it():
    """A k_proj of two heads where the config gives one failed in the copy with torch's bare reshape error."""
    torch.manual_seed(0)
    cfg = FogConfig.fog(**TINY, num_key_value_heads=1)
    state = _authors_state(FogForCausalLM(FogConfig.fog(**TINY)))
    with pytest.raises(ValueError, match=r"self_attn\.k_proj\.weight \(32, 32\) \(model \(16, 32\)\).*config\.json"):
        load_authors_state_dict(FogForCausalLM(cfg), state)


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_scalar_parameters_stored_with_other_size_one_dimensions_still_load(shape):
    """The xIELU alphas are (1,) here; a checkpoint holding them as () (or (1, 1)) loads, values unchanged."""
    torch.manual_seed(0)
    cfg = FogConfig.fog(**TINY)
    source = FogForCausalLM(cfg)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    state = _authors_state(source)
    for i in range(TINY["num_hidden_layers"]):
        for name in ("alpha_p", "alpha_n"):
            key = f"model.layers.{i}.mlp.act_fn.{name}"
            state[key] = state[key].reshape(shape)
    target = FogForCausalLM(cfg)
    load_authors_state_dict(target, state)
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
