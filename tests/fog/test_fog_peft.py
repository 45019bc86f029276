"""LoRA (peft) on FOG: adapters train, save, reload onto a reloaded base and merge back, as on transformers' models."""

import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import hf_ext  # noqa: F401  (registers FOG with the Auto classes)
from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


@torch.no_grad()
def test_lora_adapters_save_reload_and_merge(tmp_path):
    torch.manual_seed(0)
    base = FogForCausalLM(FogConfig.fog(**TINY)).eval()  # xIELU recipe: ungated MLP (up_proj, down_proj)
    base.save_pretrained(tmp_path / "base")
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    plain = base(ids).logits
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=targets, init_lora_weights=False)).eval()
    assert sum(name.endswith("lora_A") for name, _ in peft_model.named_modules()) == 2 * len(targets)
    # only the adapters train; FOG's frozen QK-norm gains stay frozen under peft too
    assert all("lora_" in name for name, p in peft_model.named_parameters() if p.requires_grad)
    adapted = peft_model(ids).logits
    assert (adapted - plain).abs().max() > 1e-3
    peft_model.save_pretrained(tmp_path / "adapter")

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    torch.testing.assert_close(reloaded.eval()(ids).logits, adapted, atol=1e-5, rtol=0)
    torch.testing.assert_close(reloaded.merge_and_unload()(ids).logits, adapted, atol=1e-5, rtol=0)


@torch.no_grad()
def test_auto_peft_model_finds_the_saved_base_with_the_causal_lm_task_type(tmp_path):
    """docs/fog.md: adapters attached to a reloaded FOG with `task_type="CAUSAL_LM"` load with
    `AutoPeftModelForCausalLM` alone (without a task type peft refuses to import hf_ext's modeling module)."""
    torch.manual_seed(0)
    FogForCausalLM(FogConfig.fog(**TINY)).save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), lora).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    assert isinstance(auto.get_base_model(), FogForCausalLM)
    torch.testing.assert_close(auto(ids).logits, peft_model(ids).logits, atol=1e-5, rtol=0)
