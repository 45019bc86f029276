"""Audit pass 15 (fg15): `convert` / `ao_recipe_kwargs` on a peft-wrapped model keep the LM head's copies and peft's
adapter linears in high precision, and their on/off switches must be real bools (as `convert`'s)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from hf_ext.fp8 import convert, fp8_converted_modules, fp8_target_filter, fp8_target_modules
from hf_ext.fp8.convert import ao_recipe_kwargs
from hf_ext.models.fog import FogConfig, FogForCausalLM

CFG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, swiglu_intermediate_size=64)
BLOCK_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}


def _fog(**kw):
    torch.manual_seed(0)
    return FogForCausalLM(FogConfig.fog(**CFG, tie_word_embeddings=False, **kw))


def _peft(model, **kw):
    config = LoraConfig(r=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **kw)
    return get_peft_model(model, config)


def _block_linear_names(names):
    """Names of the block linears (a LoRA layer's base_layer counts as the linear it wraps)."""
    return {n.removesuffix(".base_layer") for n in names}


# ------------------------------------------------------------------------------------ 1. peft-wrapped models
@pytest.mark.parametrize("backend", ["emulated", "torchao"])
def test_convert_of_a_peft_model_keeps_the_head_copies_and_the_lora_matrices_in_high_precision(backend):
    """`modules_to_save=["lm_head"]` wraps the head; its `original_module` and `modules_to_save.default` linears, and
    the LoRA `lora_A` / `lora_B` linears, were converted although `include_lm_head=False`."""
    model = convert(_peft(_fog(), modules_to_save=["lm_head"]), backend)
    converted = fp8_converted_modules(model)
    assert not [n for n in converted if "lm_head" in n]
    assert not [n for n in converted if "lora_" in n]
    assert model.hf_ext_fp8["modules"] == converted
    # exactly the block linears, as in the documented order (convert first, then get_peft_model)
    assert {n.rsplit(".", 1)[-1] for n in _block_linear_names(converted)} == BLOCK_LINEARS
    documented = _peft(convert(_fog(), backend), modules_to_save=["lm_head"])
    assert sorted(converted) == sorted(fp8_converted_modules(documented))
    head = model.base_model.model.lm_head
    assert type(head.original_module) is nn.Linear and type(head.modules_to_save["default"]) is nn.Linear
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.lora_A["default"]) is nn.Linear and type(q_proj.lora_B["default"]) is nn.Linear
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()  # still trains: adapters and the head copy get gradients
    assert q_proj.lora_B["default"].weight.grad is not None and head.modules_to_save["default"].weight.grad is not None


def test_lora_on_the_head_stays_out_unless_include_lm_head():
    """LoRA targeting the head: its `base_layer` is the head (converted with `include_lm_head=True` only) and its
    adapter matrices are never converted."""
    config = LoraConfig(r=16, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM")
    model = get_peft_model(_fog(), config)
    assert not [n for n in fp8_target_modules(model) if "lm_head" in n or "lora_" in n]
    with_head = fp8_target_modules(model, include_lm_head=True)
    assert [n for n in with_head if "lm_head" in n] == ["base_model.model.lm_head.base_layer"]
    assert not [n for n in with_head if "lora_" in n]


class _BertLike(nn.Module):
    """A block container named `output` (as BERT's `layer.0.output`) holds a block linear; the head is `lm_head`."""

    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList([nn.Module()])
        self.layer[0].output = nn.Module()
        self.layer[0].output.dense = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 32)


def test_a_block_container_named_like_a_head_keeps_its_linears_selected():
    """Only a head linear (or the module `get_output_embeddings` returns, or a peft layer wrapping it) has its whole
    subtree kept out: a container that merely shares the name `output` still has its linears converted."""
    assert fp8_target_modules(_BertLike()) == ["layer.0.output.dense"]
    model = get_peft_model(_BertLike(), LoraConfig(r=4, target_modules=["dense", "lm_head"]))
    assert fp8_target_modules(model) == ["base_model.model.layer.0.output.dense.base_layer"]


def test_the_accelerate_filter_of_a_peft_model_selects_what_convert_converts():
    """`ao_recipe_kwargs` (accelerate's fp8 path of Fp8Trainer) uses the same filter: the head copies and the LoRA
    linears are not selected, the block linears (a LoRA layer's base_layer) are, also under a wrapper prefix."""
    model = _peft(_fog(), modules_to_save=["lm_head"])
    keep = ao_recipe_kwargs(model).module_filter_func
    selected = [n for n, m in model.named_modules() if keep(m, n)]
    assert selected == fp8_target_modules(model)
    assert not [n for n in selected if "lm_head" in n or "lora_" in n]
    assert {n.rsplit(".", 1)[-1] for n in _block_linear_names(selected)} == BLOCK_LINEARS
    for name, module in model.named_modules():  # as DDP / accelerate may name them
        assert keep(module, f"module.{name}") is (name in selected), name
    head = model.base_model.model.lm_head
    assert keep(head.modules_to_save["default"], "lm_head.modules_to_save.default") is False  # another root
    assert keep(head.original_module, "x") is False  # by identity whatever the name

    from torchao.float8 import convert_to_float8_training

    converted = convert_to_float8_training(model, module_filter_fn=keep)
    assert sorted(fp8_converted_modules(converted)) == sorted(selected)


# ----------------------------------------------------------------------------------------- 3. string switches
@pytest.mark.parametrize("call", ["fp8_target_filter", "fp8_target_modules", "ao_recipe_kwargs"])
def test_include_lm_head_must_be_a_bool(call):
    fn = {"fp8_target_filter": fp8_target_filter, "fp8_target_modules": fp8_target_modules}.get(call, ao_recipe_kwargs)
    with pytest.raises(ValueError, match=r"include_lm_head must be True or False, got 'False'"):
        fn(_fog(), include_lm_head="False")


def test_ao_recipe_kwargs_refuses_a_string_pad_inner_dim():
    with pytest.raises(ValueError, match=r"ao_recipe_kwargs: pad_inner_dim must be True or False, got 'False'"):
        ao_recipe_kwargs(_fog(), pad_inner_dim="False")
    assert ao_recipe_kwargs(_fog(), pad_inner_dim=False).config.pad_inner_dim is False
