"""Audit pass 33 (lp33): `set_pair_finetuning` refuses a non-bool `enabled` (F1)."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.models.layer_parallel import convert_to_layer_parallel


@pytest.fixture(scope="module")
def paired():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4
    )
    return convert_to_layer_parallel(LlamaForCausalLM(config).eval(), 0, 2)


@pytest.mark.parametrize("enabled", ["false", "no", None, 0, 1])
def test_set_pair_finetuning_refuses_a_non_bool(paired, enabled):
    # "false" / "no" used to freeze everything but the pairs (truthy), None / 0 to unfreeze everything (falsy)
    paired.set_pair_finetuning(False)
    with pytest.raises(TypeError, match="`enabled` must be True"):
        paired.set_pair_finetuning(enabled)
    assert all(p.requires_grad for p in paired.parameters())  # nothing changed


def test_set_pair_finetuning_accepts_bools(paired):
    trainable = paired.set_pair_finetuning(np.bool_(True))
    assert trainable and all(name.startswith("model.layers.0.") for name in trainable)
    assert len(paired.set_pair_finetuning(False)) == sum(1 for _ in paired.parameters())


@pytest.mark.parametrize("mode, mlp_norm, bad", [("Block", "per_layer", "mode"), ("sublayer", "tp_split", "mlp_norm")])
def test_merge_pair_state_refuses_an_unknown_mode_or_norm(mode, mlp_norm, bad):
    # a misspelt mode ("Block") used to give the sublayer layout, an unknown norm the per-layer one, without a word
    from hf_ext.models.layer_parallel.modeling_layer_parallel import merge_pair_state

    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4
    )
    layers = LlamaForCausalLM(config).model.layers
    state_a, state_b = layers[0].state_dict(), layers[1].state_dict()
    with pytest.raises(ValueError, match=f"`{bad}` must be one of"):
        merge_pair_state(state_a, state_b, mode, mlp_norm)
    assert merge_pair_state(state_a, state_b, "block", "per_layer")  # the valid names still merge
