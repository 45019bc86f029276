"""`logits_to_keep` of hf_ext's causal LMs, as in transformers' own: an int k keeps the logits of the last k positions
(0 keeps all), a 1-D tensor keeps the listed positions (what continuous batching passes). Each kept row must equal the
same row of the full forward."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.models.fog import FogConfig, FogForCausalLM
from hf_ext.models.layer_parallel import convert_to_layer_parallel


def _fog():
    torch.manual_seed(0)
    cfg = FogConfig.fog(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48)
    return FogForCausalLM._from_config(cfg, attn_implementation="eager").eval()


def _paired(merge):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, attn_implementation="eager")
    return convert_to_layer_parallel(LlamaForCausalLM(cfg).eval(), 0, 2, merge=merge)


MODELS = {"fog": _fog, "paired_merged": lambda: _paired(True), "paired_unmerged": lambda: _paired(False)}


@torch.no_grad()
@pytest.mark.parametrize("name", list(MODELS))
def test_int_and_tensor_logits_to_keep_select_the_full_forward_rows(name):
    model = MODELS[name]()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    full = model(ids).logits
    assert full.shape == (2, 7, 64)
    torch.testing.assert_close(model(ids, logits_to_keep=0).logits, full)
    for k in (1, 3):
        kept = model(ids, logits_to_keep=k).logits
        assert kept.shape == (2, k, 64)
        torch.testing.assert_close(kept, full[:, 7 - k :])
    rows = torch.tensor([4, 0, 6])
    kept = model(ids, logits_to_keep=rows).logits
    assert kept.shape == (2, 3, 64)
    torch.testing.assert_close(kept, full[:, [4, 0, 6]])
