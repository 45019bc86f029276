"""LoRA (peft) on layer-paired models: what a user fine-tuning a converted model with adapters gets."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel Auto classes)
from hf_ext.models.layer_parallel import convert_to_layer_parallel

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@torch.no_grad()
def test_lora_on_merged_sublayer_pairs_trains_merges_and_reloads(source, ids, tmp_path):
    base = convert_to_layer_parallel(source, 0, 4).eval()  # merged "sublayer" pairs: plain (wide) nn.Linear layers
    base.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False)).eval()
    # every projection of the 3 blocks (2 merged pairs + 1 layer) got an adapter
    assert sum(name.endswith("lora_A") for name, _ in peft_model.named_modules()) == 3 * len(TARGETS)
    adapted = peft_model(ids).logits
    assert (adapted - source(ids).logits).abs().max() > 1e-3  # the adapters change the output
    peft_model.save_pretrained(tmp_path / "adapter")

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    torch.testing.assert_close(reloaded.eval()(ids).logits, adapted, atol=1e-5, rtol=0)  # reloads with SDPA, not eager
    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=0)


def test_lora_on_block_pairs_adapts_attention_inputs_only(source, ids):
    """In "block" pairs the output projection and MLP keep a branch axis (`BranchwiseLinear`), which peft's LoRA does
    not adapt; q/k/v are plain nn.Linear and take adapters (documented in docs/layer_parallel.md)."""
    base = convert_to_layer_parallel(source, 0, 4, mode="block").eval()
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"]))
    assert sum(name.endswith("lora_A") for name, _ in peft_model.named_modules()) == 3 * 3
    with pytest.raises(ValueError, match="BranchwiseLinear"):
        get_peft_model(convert_to_layer_parallel(source, 0, 4, mode="block"), LoraConfig(r=4, target_modules=TARGETS))
