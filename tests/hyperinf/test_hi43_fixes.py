"""Audit pass 37 (hi43): HyperINF input checks and recipe flags."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, LlamaForCausalLM

from hf_ext.hyperinf import InfluenceEstimator

from .conftest import _randomize_lora_b, small_llama_config

VOCAB = 50


@pytest.fixture(scope="module")
def llama_classifier():
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(small_llama_config(num_labels=3))
    lora = LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    return _randomize_lora_b(get_peft_model(model, lora), seed=3)


@pytest.fixture(scope="module")
def llama_lm():
    torch.manual_seed(0)
    model = LlamaForCausalLM(small_llama_config())
    return _randomize_lora_b(
        get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])), seed=3
    )


@pytest.fixture(scope="module")
def bert_classifier():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        max_position_embeddings=64,
    )
    lora = LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"])
    return _randomize_lora_b(get_peft_model(BertForSequenceClassification(config), lora), seed=3)


CLASSIFICATION_TRAIN = [
    {"input_ids": [7, 8, 9, 10], "labels": 2},
    {"input_ids": [10, 11, 12, 13], "labels": 0},
    {"input_ids": [14, 15, 16], "labels": 1},
]
CLASSIFICATION_EVAL = [{"input_ids": [3, 9, 5], "labels": 1}]


@pytest.mark.parametrize("method", ["vmap", "loop"])
@pytest.mark.parametrize("mask", [[1, 1], [1, 0], [1, 1, 1, 1, 1]])
def test_an_attention_mask_of_another_length_than_input_ids_is_refused(llama_classifier, mask, method):
    """Was accepted: a 2-entry mask on a 4-token example scored -2.906 under vmap (an all-ones mask is dropped there)
    and -3.062 with the loop (the model got the short mask), the unmasked example -2.906; [1, 0] scored -4.203."""
    train = [{"input_ids": [3, 4, 5, 6], "attention_mask": mask, "labels": 1}] + CLASSIFICATION_TRAIN
    estimator = InfluenceEstimator(llama_classifier, "tracin", per_example_gradients=method)
    with pytest.raises(ValueError, match=r"example 0 has \d `attention_mask` entries for 4 input_ids"):
        estimator.fit(train)


def test_a_short_mask_in_the_evaluation_set_is_refused_naming_the_example(llama_classifier):
    estimator = InfluenceEstimator(llama_classifier, "tracin").fit(CLASSIFICATION_TRAIN)
    evaluation = CLASSIFICATION_EVAL + [{"input_ids": [3, 4, 5], "attention_mask": [1, 1], "labels": 0}]
    with pytest.raises(ValueError, match=r"example 1 has 2 `attention_mask` entries for 3 input_ids"):
        estimator.scores(evaluation)


@pytest.mark.parametrize("token_type_ids", [[1], [0, 1]])
def test_token_type_ids_of_another_length_are_refused(bert_classifier, token_type_ids):
    """Was accepted: the short column was padded with zeros to the batch's width ([0, 1] -> [0, 1, 0, 0])."""
    train = [
        {"input_ids": [3, 4, 5, 6], "token_type_ids": token_type_ids, "labels": 1},
        {"input_ids": [7, 8, 9, 10], "token_type_ids": [0, 0, 0, 0], "labels": 2},
    ]
    with pytest.raises(ValueError, match=r"example 0 has \d `token_type_ids` entries for 4 input_ids"):
        InfluenceEstimator(bert_classifier, "tracin").fit(train)


def test_position_ids_of_another_length_are_refused(llama_lm):
    """Was accepted: [0, 1] on a 4-token example was padded to [0, 1, 0, 0] in its batch."""
    train = [
        {"input_ids": [3, 4, 5, 6], "position_ids": [0, 1]},
        {"input_ids": [7, 8, 9, 10], "position_ids": [0, 1, 2, 3]},
    ]
    with pytest.raises(ValueError, match=r"example 0 has 2 `position_ids` entries for 4 input_ids"):
        InfluenceEstimator(llama_lm, "tracin").fit(train)


def test_full_length_columns_and_stored_padding_are_still_accepted(llama_classifier):
    """The check leaves well-formed examples alone: a stored right-padded example scores as the unpadded one."""
    padded = {"input_ids": [3, 4, 5, 6, 0, 0], "attention_mask": [1, 1, 1, 1, 0, 0], "labels": 1}
    plain = {"input_ids": [3, 4, 5, 6], "attention_mask": [1, 1, 1, 1], "labels": 1}
    scores = [
        InfluenceEstimator(llama_classifier, "tracin").fit([first] + CLASSIFICATION_TRAIN).scores(CLASSIFICATION_EVAL)
        for first in (padded, plain)
    ]
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)


RECIPE_TINY = [
    "--pretrain_steps", "2", "--hidden_size", "32", "--max_train", "24", "--num_val", "4", "--num_test", "8",
    "--num_train_epochs", "1", "--methods", "tracin", "--disable_tqdm", "true", "--num_threads", "1",
]  # fmt: skip


def test_max_length_is_refused_with_llm_selection_before_any_output(tmp_path):
    """Was ignored: `--task llm_selection --max_length 6` and `--max_length 48` ran the whole recipe and gave identical
    scores (the instruction examples are sized by --prompt_tokens / --answer_tokens only)."""
    from hf_ext.recipes.hyperinf import main

    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--max_length only applies to --task classification"):
        main(RECIPE_TINY + ["--task", "llm_selection", "--max_length", "16", "--output_dir", str(out)])
    assert not out.exists()


def test_max_length_is_read_by_classification_and_refused_by_llm_selection():
    from hf_ext.recipes.hyperinf import InfluenceArguments, ModelArguments, TaskArguments, _refuse_inapplicable_flags

    task, model_args, inf = TaskArguments(max_length=16), ModelArguments(), InfluenceArguments()
    _refuse_inapplicable_flags(task, model_args, inf)  # classification reads it: no error
    task.task = "llm_selection"
    with pytest.raises(ValueError, match="--max_length only applies"):
        _refuse_inapplicable_flags(task, model_args, inf)


def _spy(monkeypatch, owner, name, seen):
    real = getattr(owner, name)

    def spy(model, dataset, batch_size=None, **kwargs):
        seen.append(batch_size)
        return real(model, dataset, **({} if batch_size is None else {"batch_size": batch_size}), **kwargs)

    monkeypatch.setattr(owner, name, spy)


def test_classification_evaluations_use_per_device_eval_batch_size(tmp_path, monkeypatch):
    """Was ignored: the recipe declares the flag ("Examples per device per eval step.") but evaluated in batches of 64
    whatever it was set to."""
    import hf_ext.recipes.hyperinf as recipe

    seen = []
    _spy(monkeypatch, recipe, "evaluate", seen)
    recipe.main(
        RECIPE_TINY
        + ["--select_fraction", "0.5", "--per_device_eval_batch_size", "5", "--output_dir", str(tmp_path / "out")]
    )
    assert len(seen) == 6 and set(seen) == {5}  # val, test, clean and flipped training parts, two retrainings


def test_llm_selection_evaluations_use_per_device_eval_batch_size(tmp_path, monkeypatch):
    """Was ignored: evaluate_response_loss ran in its default batches of 32."""
    import hf_ext.hyperinf.selection as selection
    from hf_ext.recipes.hyperinf import main

    seen = []
    _spy(monkeypatch, selection, "evaluate_response_loss", seen)
    main(
        RECIPE_TINY
        + ["--task", "llm_selection", "--select_fractions", "0.5", "--noise_rate", "0.3"]
        + ["--per_device_eval_batch_size", "3", "--output_dir", str(tmp_path / "out")]
    )
    assert seen and set(seen) == {3}


@pytest.mark.parametrize("init", ["identity", "frobenius", "transpose"])
@pytest.mark.parametrize("tol", [None, 1e-6])
def test_schulz_refuses_an_all_zero_matrix(init, tol):
    """Was: 'frobenius'/'transpose' raised a SchulzDivergenceError blaming 'alpha=inf' and advising init='frobenius';
    'identity' with tol=None returned 5e-5 * 2**30 * I = 53687 * I without a word."""
    from hf_ext.hyperinf import schulz_inverse

    with pytest.raises(ValueError, match="`matrix` is all zeros") as caught:
        schulz_inverse(torch.zeros(3, 3), init=init, tol=tol)
    assert type(caught.value) is ValueError


@pytest.mark.parametrize("name", [None, 3, ("x",), ""])
def test_add_influence_column_refuses_a_column_name_that_is_not_a_non_empty_str(name):
    """Was: None added a column named 'None'; an int or a tuple failed inside pyarrow ('expected bytes, int found')."""
    from datasets import Dataset

    from hf_ext.hyperinf import add_influence_column

    with pytest.raises(TypeError, match="`column_name` must be a non-empty str"):
        add_influence_column(Dataset.from_list([{"a": 1}, {"a": 2}]), [0.5, -0.5], column_name=name)


def test_an_llm_selection_run_recorded_with_another_max_length_resumes(tmp_path):
    """--max_length is refused with --task llm_selection now, so a run that recorded a value it ignored must resume
    without it (the record's 30 against the default 48 would be refused, and passing 30 is refused as unread)."""
    import json

    from transformers import TrainingArguments

    from hf_ext.recipes.hyperinf import (
        RUN_DATA_FILE,
        ModelArguments,
        TaskArguments,
        _check_run_data,
        _run_data,
    )

    task, model_args = TaskArguments(task="llm_selection"), ModelArguments()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    record = {**_run_data(task, model_args, args), "max_length": 30}
    (tmp_path / RUN_DATA_FILE).write_text(json.dumps(record))
    _check_run_data(task, model_args, args)  # no error
    task.num_val = 5  # a flag that shapes the data is still compared
    with pytest.raises(ValueError, match="--num_val 5"):
        _check_run_data(task, model_args, args)
    classification = TaskArguments()
    (tmp_path / RUN_DATA_FILE).write_text(
        json.dumps({**_run_data(classification, model_args, args), "max_length": 30})
    )
    with pytest.raises(ValueError, match="--max_length 48"):
        _check_run_data(classification, model_args, args)


@pytest.mark.parametrize("fraction", [[0.1, 0.2], (0.2, 0.5, 0.9), [0.2], []])
def test_recall_at_fraction_refuses_several_fractions_naming_the_argument(fraction):
    """Was: a raw numpy TypeError ('only 0-dimensional arrays can be converted to Python scalars')."""
    from hf_ext.hyperinf import recall_at_fraction

    with pytest.raises(TypeError, match="`fraction` must be one number"):
        recall_at_fraction([0.3, 0.1, 0.2], [True, False, False], fraction)


def test_recall_at_fraction_still_takes_numbers():
    import numpy as np

    from hf_ext.hyperinf import recall_at_fraction

    assert recall_at_fraction([0.3, 0.1, 0.2], [True, False, False], np.float64(1 / 3)) == 1.0
    assert recall_at_fraction([0.3, 0.1, 0.2], [True, False, False], 2 / 3) == 1.0
    assert recall_at_fraction([0.3, 0.1, 0.2], [True, False, False], torch.tensor(0.0)) == 0.0
