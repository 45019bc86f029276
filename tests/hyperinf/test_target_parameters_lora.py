"""A peft LoRA with `target_parameters` (parametrizations; the form docs/layer_parallel.md gives for block pairs)
cannot run under torch.func.grad: the default `per_example_gradients="vmap"` falls back to one backward per example
with a warning, as for other forwards torch.func cannot transform, instead of failing in `fit`."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.hyperinf import InfluenceEstimator, influence_from_gradients


def _model(randomize_lora_b):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, attn_implementation="eager",
    )  # fmt: skip
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], target_parameters=["o_proj.weight"])
    model = get_peft_model(LlamaForCausalLM(config).double(), lora)
    return randomize_lora_b(model).eval()


def _data(n, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 48, (n, 6), generator=gen).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def test_default_vmap_falls_back_to_the_loop_and_matches_per_example_backwards(
    reference_lora_gradients, randomize_lora_b
):
    model, train, val = _model(randomize_lora_b), _data(5, 0), _data(2, 1)
    assert any("o_proj" in n and "lora_A" in n for n, _ in model.named_parameters())
    with pytest.warns(UserWarning, match="cannot run under torch.func"):
        est = InfluenceEstimator(model, "hyperinf", batch_size=3, dtype=torch.float64).fit(train)
    assert est.method == "hyperinf"
    loop = InfluenceEstimator(model, "hyperinf", batch_size=3, dtype=torch.float64, per_example_gradients="loop")
    np.testing.assert_array_equal(est.scores(val), loop.fit(train).scores(val))
    expected = influence_from_gradients(
        reference_lora_gradients(model, train),
        reference_lora_gradients(model, val),
        method="hyperinf",
        dtype=torch.float64,
    ).numpy()
    np.testing.assert_allclose(est.scores(val), expected, rtol=1e-6, atol=1e-8 * np.abs(expected).max())
