"""peft and `convert_to_layer_parallel`: adapters on a model converted from a saved Llama save and reload as on
Llama; a LoRA-adapted Llama is refused with the fix (merge first), and the merged one converts exactly."""

import json
import os
import re

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel Auto classes)
from hf_ext.models.layer_parallel import LayerParallelForCausalLM, convert_to_layer_parallel

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def lora(**kwargs) -> LoraConfig:
    return LoraConfig(r=2, target_modules=TARGETS, init_lora_weights=False, **kwargs)


@torch.no_grad()
def test_adapters_of_a_model_converted_from_a_saved_llama_save_and_reload(source, ids, tmp_path):
    """The converted model took the source folder as its `name_or_path`; peft records that as the adapters' base and,
    while saving, reads it back with the model's config class: `PeftModel.save_pretrained` raised (a Llama folder is
    not a `LayerParallelConfig`), and the adapter config would have named the Llama as the base to load."""
    source.save_pretrained(tmp_path / "llama")
    llama = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    torch.manual_seed(1)
    adapted = get_peft_model(convert_to_layer_parallel(llama, 0, 4), lora(task_type="CAUSAL_LM")).eval()
    adapted.save_pretrained(tmp_path / "adapter")  # raised ValueError (LayerParallelConfig needs source_config)
    base_path = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_path != str(tmp_path / "llama")
    expected = adapted(ids).logits

    # The documented flow: save the converted model, attach the adapters to its reload.
    convert_to_layer_parallel(llama, 0, 4).save_pretrained(tmp_path / "lp")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "lp"), tmp_path / "adapter")
    torch.testing.assert_close(reloaded.eval()(ids).logits, expected, atol=1e-5, rtol=0)
    # A model loaded from its folder is the adapters' recorded base, as for Llama: AutoPeftModel finds it.
    torch.manual_seed(1)
    on_reload = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "lp"), lora(task_type="CAUSAL_LM"))
    on_reload.save_pretrained(tmp_path / "adapter2")
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter2").eval()
    torch.testing.assert_close(auto(ids).logits, on_reload.eval()(ids).logits, atol=1e-5, rtol=0)


def documented_autopeft_example(repo_root: str) -> tuple[str, str]:
    """docs/layer_parallel.md's `AutoPeftModelForCausalLM` example, split at its `# ... train ...` line."""
    with open(os.path.join(repo_root, "docs", "layer_parallel.md"), encoding="utf-8") as handle:
        text = handle.read()
    blocks = [
        b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "AutoPeftModelForCausalLM.from_pretrained" in b
    ]
    assert len(blocks) == 1, "docs/layer_parallel.md should show one AutoPeftModelForCausalLM example"
    before, after = re.split(r"^# \.\.\. train.*$", blocks[0], flags=re.M)
    return before, after


@torch.no_grad()
def test_the_documented_autopeft_example_runs_as_written(source, ids, repo_root, tmp_path, monkeypatch):
    """The docs' example, run as written on a converted model `lp`: `AutoPeftModelForCausalLM` finds the saved
    converted base and gives the adapted logits. The docs used to say that saving and reloading was enough, with a
    `LoraConfig` without `task_type`: peft then refused to import hf_ext's modeling module."""
    before, after = documented_autopeft_example(repo_root)
    monkeypatch.chdir(tmp_path)  # the example writes "llama-lp" and "llama-lp-lora" in the working directory
    namespace = {"lp": convert_to_layer_parallel(source, 0, 4)}
    exec(before, namespace)
    torch.manual_seed(3)
    for name, param in namespace["peft_model"].named_parameters():
        if "lora_B" in name:  # stands in for training: peft starts lora_B at zero, an adapter that changes nothing
            param.normal_()
    expected = namespace["peft_model"].eval()(ids).logits
    assert (expected - namespace["lp"].eval()(ids).logits).abs().max() > 1e-3
    exec(after, namespace)
    model = namespace["model"].eval()
    assert isinstance(model.get_base_model(), LayerParallelForCausalLM)
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=0)


def test_a_lora_adapted_llama_is_refused_with_the_fix_and_converts_once_merged(source, ids):
    """A peft-wrapped Llama (or its inner model, which holds the adapter layers) failed with a bare TypeError,
    a KeyError ('self_attn.q_proj.weight') or a "weight layout mismatch" RuntimeError; it is refused up front with
    the fix. `merge_and_unload()` first gives a model that converts like any Llama."""
    torch.manual_seed(2)
    adapted = get_peft_model(LlamaForCausalLM(source.config).eval(), lora()).eval()
    for model, start_end in (
        (adapted, (0, 4)),
        (adapted.get_base_model(), (0, 4)),
        (adapted.get_base_model(), (0, 0)),
    ):
        with pytest.raises(TypeError, match=r"peft adapters.*merge_and_unload\(\)"):
            convert_to_layer_parallel(model, *start_end)
    with torch.no_grad():
        expected = adapted(ids).logits
        merged = adapted.merge_and_unload()
        identity = convert_to_layer_parallel(merged, 0, 0)  # no pairs: the source's function
        torch.testing.assert_close(identity(ids).logits, expected, atol=1e-5, rtol=0)
        paired = convert_to_layer_parallel(merged, 0, 4, merge=False)  # reference path; the merged form must agree
        torch.testing.assert_close(
            convert_to_layer_parallel(merged, 0, 4)(ids).logits, paired(ids).logits, atol=1e-5, rtol=0
        )
