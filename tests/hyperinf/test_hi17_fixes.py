"""Audit hi17: API edges of the influence estimator.

1. A merged adapter (`model.merge_adapter()`) or a disabled one (`with model.disable_adapter():`) was accepted: its
   LoRA matrices are out of the forward, so TracIn scored through the head alone (or returned -0.0) and the other
   methods blamed "an untrained adapter?".
2. `scores()` re-read a list training set that had grown after `fit` and returned one score per current example.
3. A dict of columns (a tokenizer's output) failed with a bare `KeyError: 0`.
"""

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import BatchEncoding, LlamaConfig, LlamaForSequenceClassification

from hf_ext.hyperinf import InfluenceEstimator, PerExampleGradients, tracked_lora_parameters

_CONFIG = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, pad_token_id=0, num_labels=2)  # fmt: skip
_Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"


def _model():
    torch.manual_seed(0)
    lora = LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(LlamaForSequenceClassification(LlamaConfig(**_CONFIG)).double(), lora)


def _data(count, seed):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 40, (5,), generator=gen).tolist(), "labels": i % 2} for i in range(count)]


# 1. ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["tracin", "hyperinf"])
def test_merged_adapter_is_refused_naming_the_layer_and_unmerge(method):
    model, train, val = _model(), _data(6, 1), _data(2, 2)
    want = InfluenceEstimator(model, method, dtype=torch.float64).fit(train).scores(val)
    fitted = InfluenceEstimator(model, method, dtype=torch.float64).fit(train)
    model.merge_adapter()
    # at construction
    with pytest.raises(ValueError, match=rf"'{_Q_PROJ}'.*merged.*unmerge_adapter\(\)"):
        InfluenceEstimator(model, method)
    with pytest.raises(ValueError, match=r"merged.*unmerge_adapter\(\)"):
        tracked_lora_parameters(model, modules_to_save="none")
    # an estimator built before the merge: at fit and at scores
    with pytest.raises(ValueError, match=r"merged.*unmerge_adapter\(\)"):
        fitted.fit(train)
    with pytest.raises(ValueError, match=r"merged.*unmerge_adapter\(\)"):
        fitted.scores(val)
    model.unmerge_adapter()
    np.testing.assert_allclose(fitted.scores(val), want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_disabled_adapter_is_refused_naming_the_layer_and_the_context():
    model, train, val = _model(), _data(6, 1), _data(2, 2)
    fitted = InfluenceEstimator(model, "tracin", modules_to_save="none").fit(train)
    gradients = PerExampleGradients(model, fitted.tracked)
    with model.disable_adapter():
        with pytest.raises(ValueError, match=rf"'{_Q_PROJ}'.*disabled.*disable_adapter\(\)"):
            InfluenceEstimator(model, "tracin", modules_to_save="none")
        with pytest.raises(ValueError, match=r"disabled.*disable_adapter\(\)"):
            fitted.scores(val)
        with pytest.raises(ValueError, match=r"disabled.*disable_adapter\(\)"):
            next(gradients.iterate(train))
    scores = fitted.scores(val)  # outside the context the adapter is back
    assert np.isfinite(scores).all() and np.abs(scores).max() > 0


# 2. ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["grown", "shrunk"])
def test_scores_refuse_a_training_list_whose_length_changed_after_fit(change):
    model, train, val = _model(), _data(6, 1), _data(2, 2)
    est = InfluenceEstimator(model, "datainf").fit(train)
    if change == "grown":
        train.extend(_data(4, 3))
    else:
        del train[-2:]
    with pytest.raises(ValueError, match=r"`train_dataset`.* had 6 examples but has (10|4) now.*fit\(train_dataset\)"):
        est.scores(val)
    assert len(est.fit(train).scores(val)) == len(train)  # fitting again on the current set works


# 3. ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [dict, BatchEncoding])
def test_a_dict_of_columns_is_refused_with_a_type_error_naming_from_dict(wrap):
    model, train = _model(), _data(4, 1)
    columns = wrap({"input_ids": [ex["input_ids"] for ex in train], "labels": [ex["labels"] for ex in train]})
    est = InfluenceEstimator(model, "tracin")
    with pytest.raises(TypeError, match=r"`train_dataset` must be a datasets.Dataset.*Dataset\.from_dict"):
        est.fit(columns)
    with pytest.raises(TypeError, match=r"`eval_dataset` must be a datasets.Dataset.*Dataset\.from_dict"):
        est.fit(train).scores(columns)
    from datasets import Dataset, DatasetDict

    dataset = Dataset.from_dict(dict(columns))  # the suggested conversion works
    np.testing.assert_allclose(est.fit(dataset).scores(train), est.fit(train).scores(train))
    with pytest.raises(TypeError, match=r"`train_dataset` must be a datasets.Dataset.*\['train'\]"):
        est.fit(DatasetDict(train=dataset))
