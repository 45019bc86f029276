"""Audit hi21: the estimator after `fit`.

F1. `fit` with adapter "default" active, then `model.set_adapter("other")`, then `scores`: every score was -0.0 and
    nothing was raised (construction refused an inactive adapter, but later passes checked only merged/disabled
    layers). Every gradient pass now refuses a LoRA layer that does not apply the tracked adapter, naming both and the
    fix. An all-zero mean evaluation gradient is not refused (a saturated classifier gives one legitimately, see
    `test_a_saturated_evaluation_set_scores_zero_with_a_warning`) but warned about.
"""

import warnings

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from hf_ext.hyperinf import InfluenceEstimator, PerExampleGradients, influence_from_gradients

_CONFIG = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, pad_token_id=0, num_labels=2)  # fmt: skip
_Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"


def _lora():
    return LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return get_peft_model(LlamaForSequenceClassification(LlamaConfig(**_CONFIG)).to(dtype), _lora())


def _data(count, seed):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 40, (5,), generator=gen).tolist(), "labels": i % 2} for i in range(count)]


# F1 -------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["hyperinf", "tracin"])
def test_scores_refuse_an_adapter_switched_after_fit(method):
    model, train, val = _model(), _data(8, 1), _data(3, 2)
    model.add_adapter("other", _lora())
    est = InfluenceEstimator(model, method).fit(train)
    want = est.scores(val)
    model.set_adapter("other")
    message = r"applies adapter\(s\) \['other'\], not 'default'.*fitted on.*set_adapter\('default'\).*'other'.*fit"
    with pytest.raises(ValueError, match=message):
        est.scores(val)
    with pytest.raises(ValueError, match=message):  # every gradient pass, not only the estimator's
        next(PerExampleGradients(model, est.tracked).iterate(val))
    with pytest.raises(ValueError, match=message):  # fit again on the same estimator: still the 'default' adapter
        est.fit(train)
    model.set_adapter("default")  # back: the fitted state is intact
    np.testing.assert_array_equal(est.scores(val), want)


def test_several_active_adapters_including_the_fitted_one_still_score():
    """With several active adapters only the tracked one must be among them (a causal LM: peft activates one
    `modules_to_save` copy at a time, so a classifier cannot have two adapters active)."""
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**_CONFIG)).double()
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False), "task1")
    model.add_adapter("task2", LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False))
    model.base_model.set_adapter(["task1", "task2"])
    train, val = (
        [{"input_ids": ex["input_ids"]} for ex in _data(8, 1)],
        [{"input_ids": ex["input_ids"]} for ex in _data(3, 2)],
    )
    est = InfluenceEstimator(model, "hyperinf", adapter_name="task1").fit(train)
    scores = est.scores(val)
    assert np.isfinite(scores).all() and np.abs(scores).max() > 0
    model.base_model.set_adapter("task2")
    with pytest.raises(ValueError, match=r"applies adapter\(s\) \['task2'\], not 'task1'.*set_adapter\('task1'\)"):
        est.scores(val)
    model.base_model.set_adapter(["task1", "task2"])
    np.testing.assert_array_equal(est.scores(val), scores)


def test_a_saturated_evaluation_set_scores_zero_with_a_warning():
    """Evidence that an all-zero mean evaluation gradient is legitimate (so it is warned about, not refused): a
    float32 classifier whose logit margin exceeds ~104 on every evaluation example has softmax probabilities of
    exactly 1 and 0 there, hence an exactly zero loss gradient, while the training set (half its labels flipped)
    has non-zero gradients."""
    model = _model(torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modules_to_save" in name:
                param.mul_(1e4)
    examples = _data(80, 3)
    with torch.no_grad():
        logits = torch.stack([model(input_ids=torch.tensor([ex["input_ids"]])).logits[0] for ex in examples])
    pred, margin = logits.argmax(-1), logits.max(-1).values - logits.min(-1).values
    train = [{**ex, "labels": int(p) ^ (i % 2)} for i, (ex, p) in enumerate(zip(examples[:20], pred[:20]))]
    val = [{**ex, "labels": int(p)} for ex, p, m in zip(examples[20:], pred[20:], margin[20:]) if m > 150]
    assert len(val) >= 5
    est = InfluenceEstimator(model, "hyperinf").fit(train)
    with pytest.warns(UserWarning, match=r"mean evaluation gradient is exactly zero.*every influence score is 0"):
        scores = est.scores(val)
    assert (scores == 0).all()
    # a non-saturated evaluation set: no such warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert np.abs(est.scores(train[1::2])).max() > 0


def test_zero_evaluation_gradients_warn_in_the_engine_too():
    gen = torch.Generator().manual_seed(0)
    train = {"a": torch.randn(10, 2, 5, generator=gen, dtype=torch.float64)}
    with pytest.warns(UserWarning, match=r"exactly zero on every fitted matrix \(1\)"):
        scores = influence_from_gradients(train, {"a": torch.zeros(3, 2, 5, dtype=torch.float64)})
    assert (scores == 0).all()
