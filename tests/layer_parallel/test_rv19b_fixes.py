"""Fixes of the rv19b review of the FP8 split of merged block pairs (`split_branches`).

F1 LoRA on one per-branch linear of a converted model (docs/layer_parallel.md's own example, `"gate_branches.1"`):
   `state_dict()` raised KeyError (the stacking hook checked branch 0's key only, then popped every branch's, one of
   which peft had renamed to `...base_layer.weight`), so adapter saves and every checkpoint failed; with branch 0
   wrapped the group was left half per-branch silently. A group is now stacked only when all its branches are plain
   linears, otherwise its per-branch keys are kept; the load hook puts stacked weights into wrapped branches'
   `base_layer`.
F3 FSDP2: a full state dict loaded into a converted paired model (DCP `set_model_state_dict(full_state_dict=True)`,
   accelerate's FULL_STATE_DICT resume) failed with "mixed torch.Tensor and DTensor": the load hook now distributes
   the per-branch slices like the target parameters (2 gloo ranks, tests/layer_parallel/scripts/fsdp2_split_load.py).
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel architecture)
from hf_ext.fp8 import convert
from hf_ext.models.layer_parallel import convert_to_layer_parallel

peft = pytest.importorskip("peft")
pytest.importorskip("torchao")

_SHAPE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2)  # fmt: skip
_TARGET_SETS = [["gate_branches.1"], ["branches.0"], ["branches.1", "gate_branches.0", "up_branches.0"]]


def _converted():
    torch.manual_seed(0)
    source = LlamaForCausalLM(LlamaConfig(**_SHAPE)).eval()
    # torchao's dynamic scaling: the same weights give the same logits (no amax history)
    return convert(convert_to_layer_parallel(source, start=1, end=3, mode="block"), "torchao")


def _lora(targets):
    model = peft.get_peft_model(_converted(), peft.LoraConfig(r=2, target_modules=targets, init_lora_weights=False))
    return model.eval()


def _ids():
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("targets", _TARGET_SETS, ids="+".join)
def test_lora_on_some_branches_saves_and_reloads(targets, tmp_path):
    model = _lora(targets)
    logits = model(_ids()).logits
    state = model.state_dict()  # raised KeyError for a wrapped branch other than 0
    mlp = "base_model.model.model.layers.1.mlp."
    # a group with a wrapped branch keeps per-branch keys; a group of plain branches is stacked as before
    gate_wrapped = any(t.startswith("gate_branches") for t in targets)
    assert (mlp + "gate_weight" in state) is not gate_wrapped
    assert any(k.startswith(mlp + "gate_branches.") for k in state) is gate_wrapped
    assert mlp + "up_weight" in state or "up_branches.0" in targets

    model.save_pretrained(tmp_path / "adapter")
    reloaded = peft.PeftModel.from_pretrained(_converted(), tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded(_ids()).logits, logits, rtol=0, atol=0)

    # the peft model's full state dict loads back into the same wrapped layout, strictly
    fresh = _lora(targets)
    for param in fresh.parameters():
        param.data.zero_()
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh(_ids()).logits, logits, rtol=0, atol=0)


def test_merged_lora_saves_the_stacked_layout(tmp_path):
    model = _lora(["gate_branches.1"])
    merged = model.merge_and_unload()
    logits = merged(_ids()).logits
    state = merged.state_dict()
    assert "model.layers.1.mlp.gate_weight" in state and not any("gate_branches" in k for k in state)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = convert(AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval(), "torchao")
    torch.testing.assert_close(reloaded(_ids()).logits, logits, rtol=0, atol=0)


def test_a_stacked_state_dict_loads_into_a_wrapped_branch():
    plain = _converted()
    stacked = plain.state_dict()
    model = _lora(["gate_branches.1"])
    for param in model.parameters():
        param.data.zero_()
    result = model.base_model.model.load_state_dict(stacked, strict=False)
    assert result.unexpected_keys == []  # was gate_branches.1.weight, with its base_layer.weight missing
    assert all("lora_" in k for k in result.missing_keys), result.missing_keys
    base = model.base_model.model.model.layers[1].mlp.gate_branches[1].base_layer.weight
    torch.testing.assert_close(base, stacked["model.layers.1.mlp.gate_weight"][1], rtol=0, atol=0)


@pytest.mark.distributed
def test_fsdp2_full_state_dict_loads_into_a_converted_paired_model(lp_two_ranks):
    folder, _ = lp_two_ranks("fsdp2_split_load")  # scripts/fsdp2_split_load.py, in the shared two-rank launch
    result = json.loads((folder / "fsdp2_split_load.json").read_text())
    assert result["world_size"] == 2
    assert set(result["max_diff"]) == {"full", "full_broadcast_from_rank0", "sharded"}
    assert max(result["max_diff"].values()) == 0.0, result
