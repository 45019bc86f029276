"""LoRA on layer-paired models, the paths that were silently wrong:

* block pairs with the documented adapter config: peft's `merge_and_unload` left the `down_proj` adapter nested in the
  MLP's parameter wrapper (unmerged, still applied); saved, its weight came back random (reloaded logits off by ~3).
  `merge_peft_adapters` merges it too, and `save_pretrained` refuses a model that still holds adapter layers;
* unmerged `official_tp_split` pairs computed gate / up from the weights, bypassing their LoRA layers (no gradient,
  no effect on the output, yet `merge_and_unload` baked them in).
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel Auto classes)
from hf_ext.models.layer_parallel import convert_to_layer_parallel, merge_peft_adapters

BLOCK = dict(target_modules=["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
             target_parameters=["o_proj.weight", "mlp.gate_weight", "mlp.up_weight"])  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapted(source, config_kwargs, **convert_kwargs):
    base = convert_to_layer_parallel(source, 0, 4, **convert_kwargs).eval()
    torch.manual_seed(1)
    return get_peft_model(base, LoraConfig(r=2, init_lora_weights=False, **config_kwargs)).eval()


@torch.no_grad()
def test_block_pairs_merge_completely_and_save_and_reload(source, ids, tmp_path):
    adapted = _adapted(source, BLOCK, mode="block")
    expected = adapted(ids).logits
    merged = merge_peft_adapters(adapted)
    assert not [n for n, m in merged.named_modules() if type(m).__module__.startswith("peft")]
    torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=0)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_unloading_block_pair_adapters_gives_the_base_model_back(source, ids):
    plain = convert_to_layer_parallel(source, 0, 4, mode="block").eval()(ids).logits
    unloaded = merge_peft_adapters(_adapted(source, BLOCK, mode="block"), merge=False)
    assert torch.equal(unloaded(ids).logits, plain)


def test_a_model_still_holding_adapter_layers_is_not_saved(source, tmp_path):
    half_merged = _adapted(source, BLOCK, mode="block").merge_and_unload()  # peft's own leaves down_proj's layer
    with pytest.raises(ValueError, match=r"peft adapter layers .*down_proj.*merge_peft_adapters"):
        half_merged.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lora_on_unmerged_official_tp_split_pairs_reaches_gate_and_up(source, ids):
    adapted = _adapted(source, {"target_modules": TARGETS}, mlp_norm="official_tp_split", merge=False)
    adapted.train()
    adapted(ids, labels=ids).loss.backward()
    adapted.eval()
    lora_b = {n: p for n, p in adapted.named_parameters() if "lora_B" in n}
    assert any("branch_a.mlp.gate_proj" in n for n in lora_b) and any("branch_b.mlp.up_proj" in n for n in lora_b)
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in lora_b.values()), [
        n for n, p in lora_b.items() if p.grad is None or not p.grad.abs().max() > 0
    ]
    with torch.no_grad():
        expected = adapted(ids).logits
        # the paired layers' gate / up adapters change the output ...
        for n, p in lora_b.items():
            if "branch_" in n and ("gate_proj" in n or "up_proj" in n):
                p.mul_(0)
        assert (adapted(ids).logits - expected).abs().max() > 1e-3
        # ... and merging them in gives the adapted model's logits (with the adapters restored)
        again = _adapted(source, {"target_modules": TARGETS}, mlp_norm="official_tp_split", merge=False)
        torch.testing.assert_close(again(ids).logits, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(merge_peft_adapters(again)(ids).logits, expected, atol=1e-5, rtol=0)
