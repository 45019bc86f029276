"""ng32: `GrokDecoderForCausalLM._init_weights` gives every weight exactly what the constructor gives for the same seed
(the same draws in the same order), on each path that initialises through it instead of the constructor: weights
missing from a checkpoint (`from_pretrained`), a model built on the meta device and initialised with `init_weights`, and
a model built with transformers' `no_init_weights` and initialised afterwards (the DeepSpeed ZeRO-3 path of
`from_config`). transformers' common `test_can_init_all_missing_weights` reseeds before each module's `_init_weights`,
which the constructor does not call (it keeps PyTorch's draws, the reproductions' weights for a seed), so the
conformance harness runs it with one seed per model instead."""

import pytest
import torch
from transformers import initialization as init

from hf_ext.neuralgrok import GrokDecoderConfig, GrokDecoderForCausalLM

CFG = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16)


def _from_pretrained(config):
    torch.manual_seed(0)
    return GrokDecoderForCausalLM.from_pretrained(None, config=config, state_dict={})


def _meta_then_init_weights(config):
    with torch.device("meta"):
        model = GrokDecoderForCausalLM(config)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    return model


def _no_init_then_initialize_weights(config):
    torch.manual_seed(0)
    with init.no_init_weights():
        model = GrokDecoderForCausalLM(config)
    model.initialize_weights()
    model.tie_weights()
    return model


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("build", [_from_pretrained, _meta_then_init_weights, _no_init_then_initialize_weights])
def test_init_weights_gives_the_constructor_weights_for_a_seed(build, tie):
    config = GrokDecoderConfig(**CFG, tie_word_embeddings=tie)
    torch.manual_seed(0)
    expected = GrokDecoderForCausalLM(config).state_dict()
    model = build(GrokDecoderConfig(**CFG, tie_word_embeddings=tie))
    got = model.state_dict()
    assert sorted(got) == sorted(expected)
    assert [name for name, value in expected.items() if not torch.equal(got[name], value)] == []
    assert (model.head.weight is model.token_embeddings.weight) == tie
