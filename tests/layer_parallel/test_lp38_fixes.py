"""Audit pass 34 (lp38): `perplexity_sweep` and `layer_pairing_task_sweep` refuse a `model` they cannot pair by
that name, before any evaluation (F1)."""

import re

import pytest
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from hf_ext.models.layer_parallel import convert_to_layer_parallel
from hf_ext.models.layer_parallel.sweep import perplexity_sweep


@pytest.fixture(scope="module")
def blocks():
    return Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 2, "labels": [[1, 2, 3, 4]] * 2})


def _models(source):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    return {
        "gpt2": (gpt2, ValueError, "`model` has model_type 'gpt2'"),
        "converted": (convert_to_layer_parallel(source, 0, 2), TypeError, "`model` is already a LayerParallel"),
        "base": (source.model, TypeError, "`model` must be a causal LM with `.model.layers` and `.lm_head`"),
    }


@pytest.mark.parametrize("kind", ["gpt2", "converted", "base"])
def test_perplexity_sweep_names_a_model_it_cannot_pair(source, blocks, kind):
    # the error used to name `source_config` (an argument of LayerParallelConfig, not of the sweep), and a model
    # without an LM head was evaluated first and failed inside the evaluation with an AttributeError (`.logits`)
    model, error, message = _models(source)[kind]
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(error, match=re.escape(message)):
            perplexity_sweep(model, blocks, ranges=[(0, 2)], progress=False)
    finally:
        hook.remove()
    assert calls == []  # refused before the source model was evaluated


@pytest.mark.parametrize("kind", ["gpt2", "converted", "base"])
def test_layer_pairing_task_sweep_names_a_model_it_cannot_pair(source, kind, monkeypatch):
    # as perplexity_sweep: the error named `source_config`, or the source's lm-eval run came first
    import hf_ext.evaluation.uses as uses

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before the model was checked")

    monkeypatch.setattr(uses, "evaluate_model", no_evaluation)
    model, error, message = _models(source)[kind]
    with pytest.raises(error, match=re.escape(message)):
        uses.layer_pairing_task_sweep(model, None, [(0, 2)], tasks="hf_ext_cloze")
