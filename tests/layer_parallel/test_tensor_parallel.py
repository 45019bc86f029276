"""Tensor parallelism of layer-paired models through transformers' own TP (DTensor), on 2 gloo CPU ranks."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.models.layer_parallel import LayerParallelConfig, convert_to_layer_parallel
from hf_ext.models.layer_parallel.modeling_layer_parallel import BranchwiseGatedMLP, BranchwiseLinear


def test_tp_plan_covers_every_projection():
    """Every projection of sequential layers, merged pairs and unmerged branches has a rule; the head is gathered."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=6, num_attention_heads=2)
    src = LlamaForCausalLM(cfg)
    merged = convert_to_layer_parallel(src, 0, 2)
    unmerged = convert_to_layer_parallel(src, 0, 2, merge=False)
    block = convert_to_layer_parallel(src, 0, 2, mode="block")
    assert LayerParallelConfig.base_model_tp_plan["layers.*.self_attn.o_proj"] == "rowwise"
    assert merged.tp_plan["lm_head"] == "colwise_gather_output"
    for model in (merged, unmerged, block):
        rules = {k.removeprefix("model.") for k in model.tp_plan}
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, BranchwiseLinear, BranchwiseGatedMLP)) and name != "lm_head":
                generic = ".".join("*" if part.isdigit() else part for part in name.removeprefix("model.").split("."))
                assert generic in rules, name
    # Block pairs: their branch-split parts get the layer-parallel styles (which fall back to `rowwise` on the
    # ordinary layers' modules of the same name); models without block pairs keep transformers' own styles only.
    block_plan = {k.removeprefix("model."): v for k, v in block.tp_plan.items()}
    assert block_plan["layers.*.self_attn.o_proj"] == block_plan["layers.*.mlp.down_proj"] == "layer_parallel_rowwise"
    assert block_plan["layers.*.branch_sum"] == block_plan["layers.*.branch_input"] == "layer_parallel_block"
    assert block_plan["layers.*.post_attention_layernorm"] == "layer_parallel_block"
    assert not any(style.startswith("layer_parallel") for style in {**merged.tp_plan, **unmerged.tp_plan}.values())
    assert "layers.*.branch_b.mlp.down_proj" in {k.removeprefix("model.") for k in unmerged.tp_plan}
    # Only rules that name modules of the model: all layers in unmerged pairs leave no plain-layer rule behind.
    only_branches = convert_to_layer_parallel(src, 0, 6, merge=False)
    assert not any(".self_attn." in k and ".branch_" not in k for k in only_branches.tp_plan)


@pytest.mark.distributed
def test_two_rank_tp_matches_single_process_with_fewer_all_reduces(lp_two_ranks):
    folder, _ = lp_two_ranks("tp_layer_parallel")  # scripts/tp_layer_parallel.py, in the shared two-rank launch
    # The script itself asserted, on both ranks: logits, greedy generations (dynamic and static cache) and the
    # gradient of every parameter equal the single-process model's; each rank holds exactly one source layer of a
    # merged "sublayer" pair and one whole branch of a "block" pair; a block pair with an MLP down-projection bias is
    # refused. Here: the number of all-reduces of one forward pass over 6 source layers.
    result = json.loads((folder / "tp_result.json").read_text())
    bench = result.pop("bench")
    reduces = {name: r["all_reduces_per_forward"] for name, r in result.items()}
    assert reduces["gqa_unpaired"] == 2 * 6  # one after attention, one after the MLP, per layer
    assert reduces["mha_paired"] == reduces["gqa_paired"] == 2 * 5  # a merged pair: one per merged sublayer
    assert reduces["gqa_two_pairs"] == 2 * 4
    assert reduces["gqa_unmerged"] == 2 * 6  # unmerged branches each reduce: no saving without merging
    assert reduces["gqa_paired"] < reduces["gqa_unpaired"]
    assert reduces["mha_block"] == 2 * 4 + 1  # a merged block pair: one all-reduce for both whole branches
    assert reduces["gqa_block_two_pairs"] == 2 * 2 + 2
    assert reduces["gqa_block_attention_bias"] == 2 * 4 + 1  # q/k/v/o biases: o's is split by branch too
    collectives = {name: r["dtensor_collectives_per_forward"] for name, r in result.items()}
    assert collectives["gqa_unpaired"] - collectives["gqa_paired"] == 2  # embedding and LM head cost the same
    ratios = [line for line in bench if "decode_ratio" in line]
    assert [(r["tp"], r["mode"], r["batch"], r["effective_depth"]) for r in ratios] == [(2, "eager", 1, 5)]
    assert ratios[0]["decode_ratio"] > 0


@pytest.mark.parametrize(
    "kwargs, tp_size, message",
    [
        (dict(mode="block"), 4, r"needs tp_size=2 \(got 4\)"),
        (dict(merge=False, mlp_norm="official_tp_split"), 2, "official_tp_split"),
    ],
    ids=["block_pairs_need_tp2", "unmerged_official_tp_split"],
)
def test_layouts_the_plan_cannot_split_are_refused_before_sharding(kwargs, tp_size, message):
    """Refused with a clear error before any weight is sharded (the unmerged official_tp_split case used to crash
    inside the MLP with "mixed torch.Tensor and DTensor", found by an adversarial review)."""
    from transformers import DistributedConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4)
    model = convert_to_layer_parallel(LlamaForCausalLM(cfg), 0, 2, **kwargs)
    with pytest.raises(ValueError, match=message):
        type(model).maybe_distribute_model(model, DistributedConfig(tp_size=tp_size), mesh_manager=object())
    assert not any(hasattr(p, "device_mesh") for p in model.parameters())
