"""`causal_lm_eval_loss` arguments: `batch_size=True` ran with 1, `"4"` raised a TypeError naming no argument, and a
dataset without `input_ids` raised a bare KeyError."""

import datasets
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.utils import causal_lm_eval_loss


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    return LlamaForCausalLM(cfg)


BLOCKS = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4]], "labels": [[1, 2, 3, 4]]})


@pytest.mark.parametrize("bad", [True, "4", 0, -1, 2.0])
def test_a_bad_batch_size_is_refused_by_name(model, bad):
    with pytest.raises(ValueError, match=f"batch_size must be a positive int, got {bad!r}"):
        causal_lm_eval_loss(model, BLOCKS, batch_size=bad)


def test_a_dataset_without_input_ids_is_refused_by_name(model):
    with pytest.raises(ValueError, match=r"dataset has no input_ids column \(columns: \['text'\]\).*pack_dataset"):
        causal_lm_eval_loss(model, datasets.Dataset.from_dict({"text": ["some text"]}))
    with pytest.raises(TypeError, match="dataset must be a datasets.Dataset with an input_ids column, got list"):
        causal_lm_eval_loss(model, [{"input_ids": [1, 2, 3]}])
    assert causal_lm_eval_loss(model, BLOCKS, batch_size=1) > 0  # a good call still runs
