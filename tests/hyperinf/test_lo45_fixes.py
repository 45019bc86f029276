"""Audit pass 38 (lo45): token ids outside the model's input embedding are refused by example before the forward."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from hf_ext.hyperinf import InfluenceEstimator
from hf_ext.hyperinf.gradients import PerExampleGradients, tracked_lora_parameters

from .conftest import small_llama_config

VOCAB = 50


@pytest.fixture(scope="module")
def llama_lm():
    torch.manual_seed(0)
    return get_peft_model(
        LlamaForCausalLM(small_llama_config()), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )


@pytest.mark.parametrize("method", ["vmap", "loop"])
@pytest.mark.parametrize("bad, position", [(400, 2), (VOCAB, 2), (-1, 2)])
def test_ids_outside_the_embedding_are_refused_naming_the_example(llama_lm, method, bad, position):
    # used to fail in the forward with a bare "IndexError: index out of range in self"
    train = [{"input_ids": [3, 4, 5, 6]}, {"input_ids": [3, 4, bad, 6]}]
    with pytest.raises(
        ValueError,
        match=rf"example 1 has input_ids {bad} \(at position {position}\) outside the model's input embedding of "
        rf"{VOCAB} rows \(ids 0\.\.{VOCAB - 1}\).*resize_token_embeddings",
    ):
        InfluenceEstimator(llama_lm, "tracin", per_example_gradients=method).fit(train)


def test_the_check_reads_the_ids_the_model_embeds(llama_lm):
    grads = PerExampleGradients(llama_lm, tracked_lora_parameters(llama_lm))
    assert grads.embedding_rows == VOCAB
    # stored padding (attention_mask 0 at the edges) is cut before the forward: its ids are never embedded
    padded = {"input_ids": [3, 4, VOCAB - 1, 999], "attention_mask": [1, 1, 1, 0]}
    assert list(grads._as_alone(padded, 0)["input_ids"]) == [3, 4, VOCAB - 1]
    # an example with images is left to the model (vision-language placeholder ids); an encoder-decoder's decoder
    # inputs are not images: its input_ids are checked
    grads._check_token_ids({"input_ids": [3, 4000], "pixel_values": torch.zeros(1, 3, 2, 2)}, 0)
    with pytest.raises(ValueError, match=r"example 7 has input_ids 4000 \(at position 1\)"):
        grads._check_token_ids({"input_ids": [3, 4000], "pixel_values": None}, 7)
    with pytest.raises(ValueError, match=r"example 8 has input_ids 4000 \(at position 1\)"):
        grads._check_token_ids({"input_ids": [3, 4000], "decoder_input_ids": [0, 1]}, 8)
