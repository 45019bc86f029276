"""Tests pinning fg31's tied-head refusal to its case (audit mu32): te with the head and a tied head only."""

import pytest

from hf_ext.fp8 import convert
from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)


@pytest.mark.parametrize("tie, include_lm_head", [(False, True), (True, False)])
def test_te_does_not_refuse_an_untied_head_or_a_tied_head_left_out(tie, include_lm_head):
    model = FogForCausalLM(FogConfig.fog(tie_word_embeddings=tie, **TINY))
    try:
        convert(model, "te", include_lm_head=include_lm_head)
    except ImportError:  # no Transformer Engine here; the tied-head refusal is checked before that
        pass


def test_emulated_with_the_lm_head_keeps_a_tied_head_tied():
    model = FogForCausalLM(FogConfig.fog(tie_word_embeddings=True, **TINY))
    convert(model, "emulated", include_lm_head=True)
    assert type(model.lm_head).__name__ != "Linear"  # the head is in FP8
    assert model.lm_head.weight is model.model.embed_tokens.weight
