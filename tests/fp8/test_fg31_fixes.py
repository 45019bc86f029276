"""Fixes of audit pass 31 (fg31) in hf_ext.fp8."""

import pytest

from hf_ext.fp8 import convert
from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)


def test_te_with_the_lm_head_refuses_a_tied_head_before_anything_changes():
    """F3: `te.Linear` holds a copy of the weight, so converting a tied LM head with Transformer Engine silently untied
    it (the head and the embeddings then train apart); the reference allows --fp8-lmhead with untied embeddings only."""
    model = FogForCausalLM(FogConfig.fog(tie_word_embeddings=True, **TINY))
    with pytest.raises(ValueError, match=r"include_lm_head=True with backend='te' needs an untied LM head"):
        convert(model, "te", include_lm_head=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert type(model.lm_head).__name__ == "Linear" and type(model.model.layers[0].mlp.up_proj).__name__ == "Linear"
