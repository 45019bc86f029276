"""Fixes of the md25 metadata audit.

1. The recipe's `--eval_tasks` evaluation placed the URL at the start of every prompt, and lm-eval cut a prompt longer
   than the model's context from the left, URL first: the with-URL row was then scored without the URL. Such a run
   now raises a `ValueError` naming the prompt's length, the context and `--eval_fewshot` (the library side is tested
   in tests/evaluation/test_prefix_fits_context.py).
"""

import copy
import types

import pytest
import torch

from hf_ext.metadata import add_context_tokens, metadata_template

# ---------------------------------------------------------------------------------------------------------------------
# 1. the recipe's with-URL evaluation must not lose the URL to lm-eval's left truncation


def test_recipe_eval_refuses_prompts_longer_than_the_model_context(tokenizer):
    """The audit's scenario: the 4096-token tokenizer with the context tokens, a tiny Llama with 160 positions and
    hf_ext_cloze at 3 shots (prompts of about 200-300 tokens). Before the fix 0 of 4 scored rows carried the URL and
    the run reported its with-URL column; now nothing is scored."""
    pytest.importorskip("lm_eval")
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.recipes.metadata_pretrain import MetadataArguments, evaluate_tasks_with_and_without_url

    tok = copy.deepcopy(tokenizer)
    add_context_tokens(tok)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=160))  # fmt: skip
    scored = []
    forward = model.forward

    def recording(self, input_ids=None, **kwargs):
        scored.extend(input_ids.tolist())
        return forward(input_ids=input_ids, **kwargs)

    model.forward = types.MethodType(recording, model)
    meta = MetadataArguments(layout="context", max_metadata_tokens=32, eval_tasks="hf_ext_cloze", eval_fewshot="3",
                             eval_limit=4, eval_batch_size=1)  # fmt: skip
    with pytest.raises(ValueError, match=r"is \d+ tokens, but lm-eval keeps only the last 161 .*--eval_fewshot"):
        evaluate_tasks_with_and_without_url({"url_conditioned": model}, tok, metadata_template("url"), meta)
    assert scored == []
