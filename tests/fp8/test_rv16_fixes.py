"""Pass-16 review (rv16) of the fp8 + peft fixes: peft adapter layers that are themselves `nn.Linear` subclasses
(VBLoRA, RandLoRA, ...) were selected for FP8 together with their `base_layer` (torchao replaced the whole adapter
layer, the emulated backend failed half-way), and the emulated `Fp8Linear` returned a view made inside its autograd
Function, so an in-place update of its output (peft's AdaLoRA does `result += ...`) failed."""

import numpy as np
import pytest
import torch
from peft import AdaLoraConfig, LoraConfig, RandLoraConfig, VBLoRAConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.fp8 import convert, fp8_converted_modules, fp8_target_modules
from hf_ext.fp8.emulation import Fp8Linear
from hf_ext.models.fog import FogConfig

_ADAPTERS = {
    "lora": lambda: LoraConfig(r=8, target_modules=["q_proj", "down_proj"]),
    "vblora": lambda: VBLoRAConfig(r=4, target_modules=["q_proj", "down_proj"], vector_length=16, num_vectors=8),
    "randlora": lambda: RandLoraConfig(r=8, target_modules=["q_proj", "down_proj"]),
}


def _llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def _tuner_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


@pytest.mark.parametrize("adapter", sorted(_ADAPTERS))
def test_only_the_base_layer_of_an_adapter_layer_is_selected(adapter):
    model = get_peft_model(_llama(), _ADAPTERS[adapter]())
    selected = fp8_target_modules(model)
    tuners = _tuner_layers(model)
    assert len(tuners) == 4
    for name in tuners:
        assert name not in selected, f"{adapter}: the adapter layer {name} itself is selected"
        assert f"{name}.base_layer" in selected


@pytest.mark.parametrize("backend", ["emulated", "torchao"])
@pytest.mark.parametrize("adapter", sorted(_ADAPTERS))
def test_convert_keeps_the_adapter_and_trains_it(adapter, backend):
    model = get_peft_model(_llama(), _ADAPTERS[adapter]())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    tuners = set(_tuner_layers(model))
    converted = convert(model, backend)
    assert set(_tuner_layers(converted)) == tuners
    assert {n for n, p in converted.named_parameters() if p.requires_grad} == trainable
    now_fp8 = set(fp8_converted_modules(converted))
    for name in tuners:
        assert f"{name}.base_layer" in now_fp8, name
        assert name not in now_fp8, name
    if backend == "emulated":
        assert all(isinstance(converted.get_submodule(f"{n}.base_layer"), Fp8Linear) for n in tuners)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    converted.train()
    converted(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in converted.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("shape", [(4, 8, 32), (5, 32)])
def test_fp8_linear_output_can_be_updated_in_place(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    base = Fp8Linear.from_linear(nn.Linear(32, 16))
    twin = Fp8Linear.from_linear(nn.Linear(32, 16))
    twin.load_state_dict(base.state_dict())
    extra = torch.randn(*shape[:-1], 16)
    y = base(x)
    assert y.shape == (*shape[:-1], 16)
    y += extra  # as peft's AdaLoRA does
    y.square().sum().backward()
    z = twin(x) + extra
    z.square().sum().backward()
    torch.testing.assert_close(y, z, rtol=0, atol=0)
    torch.testing.assert_close(base.weight.grad, twin.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(base.bias.grad, twin.bias.grad, rtol=0, atol=0)


@pytest.mark.parametrize("order", ["convert_then_peft", "peft_then_convert"])
def test_adalora_trains_on_an_emulated_fp8_model(order):
    config = AdaLoraConfig(r=8, target_modules=["q_proj"], total_step=10)
    if order == "convert_then_peft":
        model = get_peft_model(convert(_llama(), "emulated"), config)
    else:
        model = convert(get_peft_model(_llama(), config), "emulated")
    assert any(isinstance(m, Fp8Linear) for m in model.modules())
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora_grads and all(g is not None for g in lora_grads)


@pytest.mark.parametrize("recipe", ["fog", "llama_baseline"])
def test_fog_config_accepts_a_numpy_integer_width(recipe):
    small = dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1, vocab_size=64)
    config = getattr(FogConfig, recipe)(swiglu_intermediate_size=np.int64(64), **small)
    reference = getattr(FogConfig, recipe)(swiglu_intermediate_size=64, **small)
    assert type(config.intermediate_size) is int
    assert config.intermediate_size == reference.intermediate_size
    config.to_json_string()
    with pytest.raises(ValueError, match="swiglu_intermediate_size"):
        getattr(FogConfig, recipe)(swiglu_intermediate_size=np.float64(64), **small)
