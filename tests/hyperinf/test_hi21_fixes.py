"""Audit hi21: the estimator after `fit`.

F1. `fit` with adapter "default" active, then `model.set_adapter("other")`, then `scores`: every score was -0.0 and
    nothing was raised (construction refused an inactive adapter, but later passes checked only merged/disabled
    layers). Every gradient pass now refuses a LoRA layer that does not apply the tracked adapter, naming both and the
    fix. An all-zero mean evaluation gradient is not refused (a saturated classifier gives one legitimately, see
    `test_a_saturated_evaluation_set_scores_zero_with_a_warning`) but warned about.
F2. Changing the model after `fit` (more fine-tuning, a checkpoint loaded into it) mixed the fitted curvature and
    damping with gradients of the new weights (up to 61.6x off a fresh fit), silently. `fit` records a digest of the
    tracked and trainable parameters; `scores` refuses when it changed.
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


def test_a_partly_zero_evaluation_gradient_scores_without_the_warning():
    """mu22 F7: one fitted matrix with a zero mean evaluation gradient and another with a non-zero one is an ordinary
    case (scores are not all zero), so the "exactly zero on every fitted matrix" warning must not fire."""
    gen = torch.Generator().manual_seed(0)
    train = {n: torch.randn(10, 2, 5, generator=gen, dtype=torch.float64) for n in ("a", "b")}
    evaluation = {
        "a": torch.zeros(3, 2, 5, dtype=torch.float64),
        "b": torch.randn(3, 2, 5, generator=gen, dtype=torch.float64),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        scores = influence_from_gradients(train, evaluation)
    assert np.abs(np.asarray(scores)).max() > 0


# F2 -------------------------------------------------------------------------------------------------------------------

_CHANGED = r"parameters changed since `fit` \({}.*Call `fit\(train_dataset\)` again"


@pytest.mark.parametrize("method", ["hyperinf", "datainf", "tracin"])
def test_scores_refuse_lora_weights_changed_after_fit(method):
    model, train, val, other = _model(), _data(8, 1), _data(3, 2), _data(4, 5)
    est = InfluenceEstimator(model, method).fit(train)
    want, want_other = est.scores(val), est.scores(other)
    # ordinary use is unaffected: several evaluation sets, repeated calls, same numbers
    np.testing.assert_array_equal(est.scores(val), want)
    np.testing.assert_array_equal(est.scores(other), want_other)
    lora = {name: p for name, p in model.named_parameters() if "lora_" in name}
    saved = {name: p.detach().clone() for name, p in lora.items()}
    with torch.no_grad():
        for param in lora.values():
            param.mul_(3.0)
    with pytest.raises(ValueError, match=_CHANGED.format(rf"'{_Q_PROJ}.lora_A.default.weight' and 3 more")):
        est.scores(val)
    fresh = InfluenceEstimator(model, method).fit(train).scores(val)
    assert np.abs(fresh - want).max() > 1e-3 * np.abs(want).max()  # the change matters
    np.testing.assert_array_equal(est.fit(train).scores(val), fresh)  # fit again: the current model's scores
    with torch.no_grad():  # the original weights back: `est` was refitted on the x3 ones, so it refuses them
        for name, param in lora.items():
            param.copy_(saved[name])
    with pytest.raises(ValueError, match=_CHANGED.format("")):
        est.scores(val)
    np.testing.assert_array_equal(est.fit(train).scores(val), want)


def test_scores_refuse_a_changed_trainable_head_parameter_that_is_not_tracked():
    """The head bias of `modules_to_save` is trainable but not tracked (modules_to_save="output"): it changes every
    gradient all the same."""
    torch.manual_seed(0)
    base = LlamaForSequenceClassification(LlamaConfig(**_CONFIG)).double()
    base.score.bias = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False, modules_to_save=["score"])
    model, train, val = get_peft_model(base, lora), _data(8, 1), _data(3, 2)
    est = InfluenceEstimator(model, "hyperinf").fit(train)
    bias = dict(model.named_parameters())["base_model.model.score.modules_to_save.default.bias"]
    assert bias.requires_grad and bias.shape == (2,)
    assert "base_model.model.score.modules_to_save.default.bias" not in {m.name for m in est.tracked}
    est.scores(val)
    with torch.no_grad():
        bias.add_(torch.tensor([2.0, -2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=_CHANGED.format(r"'base_model.model.score.modules_to_save.default.bias'")):
        est.scores(val)


def test_a_frozen_reloaded_adapter_and_a_merge_round_trip_are_not_changes():
    """Frozen tracked parameters are fingerprinted too; merging and unmerging changes only the (frozen, untracked)
    base weights, so the fitted estimator still scores."""
    model, train, val = _model(), _data(8, 1), _data(3, 2)
    for param in model.parameters():
        param.requires_grad_(False)
    est = InfluenceEstimator(model, "hyperinf").fit(train)
    want = est.scores(val)
    model.merge_adapter()
    model.unmerge_adapter()
    np.testing.assert_allclose(est.scores(val), want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    with torch.no_grad():
        dict(model.named_parameters())[f"{_Q_PROJ}.lora_B.default.weight"].add_(0.5)
    with pytest.raises(ValueError, match=_CHANGED.format(rf"'{_Q_PROJ}.lora_B.default.weight':")):
        est.scores(val)
