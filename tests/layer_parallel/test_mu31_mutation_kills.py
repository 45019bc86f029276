"""Layer-pairing configuration behaviours a mutation run (mu31) found unpinned: the range end just past the last layer,
and a source config whose `num_key_value_heads` was left unset."""

import pytest
from transformers import LlamaConfig

from hf_ext.models.layer_parallel import LayerParallelConfig
from hf_ext.models.layer_parallel.configuration_layer_parallel import resolve_pairs


@pytest.mark.parametrize("start, end", [(3, 5), (5, 5)])
def test_resolve_pairs_refuses_a_range_ending_one_past_the_model(start, end):
    """`end` may be `num_layers` but not `num_layers + 1`: [3, 5) on 4 layers would pair a layer 4 that does not exist,
    and the empty [5, 5) starts past the model."""
    assert resolve_pairs(4, 2, 4) == [[2, 3]]
    with pytest.raises(ValueError, match="out of range for a model with 4 layers"):
        resolve_pairs(4, start, end)


def test_source_without_num_key_value_heads_mirrors_the_attention_head_count():
    """A source config whose `num_key_value_heads` is unset (None) has one KV head per attention head (multi-head
    attention), as transformers' Llama reads it; the mirrored value and the per-slot cache sizes follow that."""
    src = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=24, num_hidden_layers=4, num_attention_heads=4)
    src.num_key_value_heads = None
    config = LayerParallelConfig(source_config=src, lp_pairs=[[0, 1]])
    assert config.num_key_value_heads == 4
    assert config.kv_heads_per_slot() == [8, 4, 4]
    assert config.attention_heads_per_slot() == [8, 4, 4]
