"""Audit pass 38 (lo45): the document-attention probe on models with recurrent (state-space) layers."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from hf_ext.metadata.collator import check_document_attention

COMMON = dict(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def _model(model_type, **kwargs):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **COMMON, **kwargs))


def test_jamba_is_refused_for_its_mamba_state():
    # layer 0 is a Mamba mixer: its state carries the first document into the second (leak 0.0035 against 0.53 for a
    # whole-row mask), which the 0.1 tolerance meant for attention accepted silently
    model = _model(
        "jamba",
        num_key_value_heads=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        mamba_d_state=8,
        mamba_dt_rank=8,
    )
    with pytest.raises(
        ValueError, match=r"Its layers of type \['linear_attention', 'mamba'\] .* carry their state"
    ) as err:
        check_document_attention(model)
    assert "create_causal_mask" not in str(err.value)  # the attention masks are not what leaks here
    assert "block_size=None" in str(err.value)


def test_bamba_refusal_names_the_recurrent_layers_not_the_mask():
    model = _model(
        "bamba",
        num_key_value_heads=2,
        mamba_n_heads=4,
        mamba_d_head=32,
        mamba_d_state=16,
        mamba_chunk_size=16,
        attn_layer_indices=[1],
    )
    with pytest.raises(ValueError, match=r"BambaForCausalLM does not keep packed documents apart") as err:
        check_document_attention(model)
    assert "Its layers of type ['linear_attention']" in str(err.value)
    assert "OPT, Bloom" not in str(err.value)
