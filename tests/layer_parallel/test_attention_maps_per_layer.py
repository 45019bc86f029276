"""A merged pair returns one attention map with both layers' heads (the documented exception to transformers' common
generation tests); `attention_heads_per_slot` and `attentions_per_source_layer` give users the per-layer view."""

import pytest
import torch

from hf_ext.models.layer_parallel import convert_to_layer_parallel


@pytest.mark.parametrize("mode", ["sublayer", "block"])
@torch.no_grad()
def test_merged_maps_split_into_the_unmerged_per_layer_maps(source, ids, mode):
    merged = convert_to_layer_parallel(source, pairs=[[1, 2]], mode=mode, merge=True)
    unmerged = convert_to_layer_parallel(source, pairs=[[1, 2]], mode=mode, merge=False)
    slots = merged(ids, output_attentions=True).attentions
    assert [a.shape[1] for a in slots] == merged.config.attention_heads_per_slot() == [4, 8, 4, 4]
    per_layer = merged.attentions_per_source_layer(slots)
    reference = unmerged(ids, output_attentions=True).attentions
    assert unmerged.config.attention_heads_per_slot() == [4] * 5
    assert unmerged.attentions_per_source_layer(reference) == tuple(reference)
    assert len(per_layer) == source.config.num_hidden_layers
    for got, want in zip(per_layer, reference):
        assert got.shape == (2, 4, 6, 6)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # Layer 0 is not paired: its map is the source model's.
    torch.testing.assert_close(per_layer[0], source(ids, output_attentions=True).attentions[0], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_attentions_per_source_layer_rejects_other_inputs(source, ids):
    merged = convert_to_layer_parallel(source, pairs=[[1, 2]], merge=True)
    slots = merged(ids, output_attentions=True).attentions
    with pytest.raises(ValueError, match="one map per slot"):
        merged.attentions_per_source_layer(slots[:-1])
    with pytest.raises(ValueError, match="one map per slot"):
        merged.attentions_per_source_layer(None)
    with pytest.raises(ValueError, match="heads where its slot has"):
        merged.attentions_per_source_layer((slots[1],) * len(slots))


@torch.no_grad()
def test_attentions_per_source_layer_refuses_tensor_parallel_maps(source, ids):
    """Under TP each rank's maps hold its own heads only (at TP=2 a merged slot is one layer per rank): splitting them
    in two would mislabel heads, so the helper says why instead (before: a misleading head-count error)."""
    merged = convert_to_layer_parallel(source, pairs=[[1, 2]])
    slots = merged(ids, output_attentions=True).attentions
    merged._tp_size = 2  # what transformers sets on a model loaded with DistributedConfig(tp_size=2)
    with pytest.raises(ValueError, match="tensor parallelism"):
        merged.attentions_per_source_layer(slots)
