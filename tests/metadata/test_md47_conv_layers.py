"""md47: `check_document_attention` did not count LFM2's short convolutions (layer type `conv`) as state-carrying: their
3-token causal window reaches into the previous packed document (a document's logits moved by 0.00058 with the document
before it, against 0.49 for one mask over the whole row), below the 0.1 tolerance meant for attention, so a packed LFM2
was accepted. ZAYA1's `hybrid_sliding` layers leak far more and were refused, but the message blamed the attention
mask. Both now count as state-carrying: any change above 1e-4 of the whole-row one is refused, naming those layers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from hf_ext.metadata.collator import check_document_attention

COMMON = dict(
    vocab_size=64, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
    num_key_value_heads=2,
)  # fmt: skip


def test_lfm2_short_convolutions_are_refused_when_packed():
    config = AutoConfig.for_model("lfm2", **COMMON, layer_types=["full_attention", "conv", "conv", "conv"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=r"Lfm2ForCausalLM does not keep packed documents apart") as err:
        check_document_attention(model)
    assert "Its layers of type ['conv']" in str(err.value)


def test_lfm2_attention_only_layers_still_pass():
    config = AutoConfig.for_model("lfm2", **{**COMMON, "num_hidden_layers": 2}, layer_types=["full_attention"] * 2)
    torch.manual_seed(0)
    check_document_attention(AutoModelForCausalLM.from_config(config))  # no conv layer: nothing carried over


def test_zaya_sliding_hybrid_layers_are_named_as_the_cause():
    # ZAYA1's `hybrid_sliding` layers carry a linear-attention-shaped state: the leak (0.29 against 0.34) was refused,
    # but blamed on the attention mask (OPT, Bloom, ...) instead of the layers that carry the previous document
    config = AutoConfig.for_model(
        "zaya", vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, moe_intermediate_size=32, num_experts=2, router_hidden_size=16, sliding_window=8,
        layer_types=["hybrid_sliding"] * 2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"ZayaForCausalLM does not keep packed documents apart") as err:
        check_document_attention(AutoModelForCausalLM.from_config(config))
    assert "Its layers of type ['hybrid_sliding']" in str(err.value)
    assert "OPT, Bloom" not in str(err.value)
