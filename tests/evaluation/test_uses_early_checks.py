"""Arguments of the lm-eval helpers checked before the first (costly) evaluation.

`layer_pairing_task_sweep(eval_dataset=...)` read the dataset only after the source model's full lm-eval run (a
dataset without `input_ids` then failed with a bare KeyError), and its perplexity column read 1.0 on data with no
token to predict. `compliance_gap(model, model, relative="false" or undefined="skip")` was refused by `compute_dcg`
after both models' evaluations."""

import pytest
import torch
from datasets import Dataset

pytest.importorskip("lm_eval")

import hf_ext.evaluation.uses as uses  # noqa: E402

CFG = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2)


def _llama(tok, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), max_position_embeddings=256, **CFG)).eval()


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fail any lm-eval run: the call under test must refuse its arguments before the first."""

    def evaluate(*args, **kwargs):
        raise AssertionError("a model was evaluated before the arguments were checked")

    monkeypatch.setattr(uses, "evaluate_model", evaluate)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (Dataset.from_dict({"text": ["some text"] * 4}), ValueError, "no input_ids and no labels column"),
        (Dataset.from_dict({"input_ids": [], "labels": []}), ValueError, "is empty"),
        (Dataset.from_dict({"input_ids": [[4], [5]], "labels": [[4], [5]]}), ValueError, "no token to predict"),
        ({"input_ids": [[4, 5]], "labels": [[4, 5]]}, TypeError, "must be a datasets.Dataset"),
    ],
)
def test_task_sweep_checks_eval_dataset_before_any_evaluation(small_tokenizer, no_evaluation, bad, error, match):
    with pytest.raises(error, match=f"eval_dataset.*{match}"):
        uses.layer_pairing_task_sweep(
            _llama(small_tokenizer), small_tokenizer, [(2, 4)], tasks=["hf_ext_cloze"], metric="acc", limit=2,
            eval_dataset=bad,
        )  # fmt: skip


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ({"relative": "false"}, TypeError, "relative must be True .* or False"),
        ({"relative": 1}, TypeError, "relative must be True .* or False"),
        ({"undefined": "skip"}, ValueError, "undefined must be 'raise' or 'nan', got 'skip'"),
        ({"undefined": None}, ValueError, "undefined must be 'raise' or 'nan', got None"),
    ],
)
def test_compliance_gap_checks_relative_and_undefined_before_any_evaluation(
    small_tokenizer, no_evaluation, bad, error, match
):
    full, comp = _llama(small_tokenizer, 1), _llama(small_tokenizer, 2)
    with pytest.raises(error, match=match):
        uses.compliance_gap(full, comp, small_tokenizer, tasks=["hf_ext_cloze"], metric="acc", limit=2, **bad)
