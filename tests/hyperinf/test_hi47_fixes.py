"""Audit pass 39 (hi47): the input-id range check sees the embedding through peft's modules_to_save and
trainable-token wrappers."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from hf_ext.hyperinf import InfluenceEstimator
from hf_ext.hyperinf.gradients import PerExampleGradients, tracked_lora_parameters

from .conftest import small_llama_config

VOCAB = 50


def _embedding_saved():
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens"])
    return get_peft_model(LlamaForCausalLM(small_llama_config()), config)


def _trainable_tokens():
    torch.manual_seed(0)
    model = LlamaForCausalLM(small_llama_config())
    model.resize_token_embeddings(VOCAB + 2, mean_resizing=False)  # two added tokens, trained as token rows
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], trainable_token_indices=[VOCAB, VOCAB + 1])
    return get_peft_model(model, config)


@pytest.mark.parametrize(
    "build, rows", [(_embedding_saved, VOCAB), (_trainable_tokens, VOCAB + 2)], ids=["modules_to_save", "tokens"]
)
def test_ids_outside_a_wrapped_embedding_are_refused_naming_the_example(build, rows):
    # the check read `get_input_embeddings()`, which is peft's ModulesToSaveWrapper / TrainableTokensWrapper here, not
    # an nn.Embedding: it was skipped and the forward failed with a bare "IndexError: index out of range in self"
    model = build()
    assert PerExampleGradients(model, tracked_lora_parameters(model)).embedding_rows == rows
    train = [{"input_ids": [3, 4, 5, 6]}, {"input_ids": [3, rows, 5]}]
    with pytest.raises(
        ValueError, match=rf"example 1 has input_ids {rows} \(at position 1\) outside the model's input"
    ):
        InfluenceEstimator(model, "tracin", per_example_gradients="loop").fit(train)


def test_ids_of_the_wrapped_embedding_are_still_accepted():
    # the added tokens' ids (the last rows of the resized embedding) are the model's own
    model = _trainable_tokens()
    train = [{"input_ids": [3, 4, VOCAB, 6]}, {"input_ids": [3, VOCAB + 1, 5]}]
    scores = InfluenceEstimator(model, "tracin", per_example_gradients="loop").fit(train).scores(train[:1])
    assert scores.shape == (2,) and bool(torch.isfinite(torch.as_tensor(scores)).all())
