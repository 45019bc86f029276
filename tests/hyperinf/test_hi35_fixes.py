"""Audit hi35: `InfluenceEstimator` refuses an option its method does not read (it was ignored without a word)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.hyperinf import InfluenceEstimator


@pytest.fixture(scope="module")
def tiny_lora():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, pad_token_id=0,
    )  # fmt: skip
    return get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))


@pytest.mark.parametrize(
    "method, option, value",
    [
        ("exact", "schulz_extra_damping", 1e-3),
        ("datainf", "lissa_iterations", 50),
        ("hyperinf", "exact_curvature", "fim"),
        ("tracin", "schulz_tol", 1e-12),
        ("lissa", "max_exact_dim", 16),
    ],
)
def test_an_option_the_method_does_not_read_is_refused(tiny_lora, method, option, value):
    with pytest.raises(ValueError, match=rf"method='{method}' does not read `{option}`"):
        InfluenceEstimator(tiny_lora, method, **{option: value})


def test_options_the_method_reads_or_left_at_their_default_are_accepted(tiny_lora):
    InfluenceEstimator(tiny_lora, "hyperinf", schulz_extra_damping=1e-3, schulz_iterations=30, damping_scale=0.2)
    InfluenceEstimator(tiny_lora, "lissa", lissa_iterations=3, lissa_scale=2.0)
    InfluenceEstimator(tiny_lora, "exact", exact_curvature="fim", max_exact_dim=64)
    # defaults passed explicitly (generic code looping over methods) and the damping with tracin stay accepted
    InfluenceEstimator(tiny_lora, "datainf", schulz_dtype=torch.float64, lissa_iterations=10, exact_curvature="gfim")
    InfluenceEstimator(tiny_lora, "tracin", damping_scale=0.3)
