"""Tests from the mu30 mutation run over hf_ext/hyperinf (each fails with its mutant applied, passes on clean code)."""

import pytest
import torch

from hf_ext.hyperinf import InfluenceEstimator


@pytest.mark.parametrize("batch_size", [0, -1])
def test_estimator_refuses_a_non_positive_batch_size_by_name(batch_size):
    """`batch_size` is checked before anything else is built: 0 made the gradient pass's window `16 * batch_size`
    empty (a `range()` step of 0 deep inside `fit`), a negative one iterated nothing. (mu30 E03)"""
    with pytest.raises(ValueError, match=rf"`batch_size` must be a positive int, got {batch_size}"):
        InfluenceEstimator(torch.nn.Linear(2, 2), "hyperinf", batch_size=batch_size)


def test_scores_refuse_a_trainable_parameter_removed_after_fit():
    """A trainable parameter `fit` fingerprinted that the model no longer has (here the head bias of
    `modules_to_save`, set to None) is a change of the model as much as a changed value: the fitted curvature belongs
    to a model with it. (mu30 E06)"""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, num_labels=2)  # fmt: skip
    base = LlamaForSequenceClassification(config).double()
    base.score.bias = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False, modules_to_save=["score"])
    model = get_peft_model(base, lora)
    gen = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(1, 40, (5,), generator=gen).tolist(), "labels": i % 2} for i in range(6)]
    est = InfluenceEstimator(model, "tracin").fit(data)
    est.scores(data[:2])
    name = "base_model.model.score.modules_to_save.default.bias"
    model.base_model.model.score.modules_to_save["default"].bias = None
    assert name not in dict(model.named_parameters())
    with pytest.raises(ValueError, match=rf"parameters changed since `fit` \('{name}'"):
        est.scores(data[:2])


def test_schulz_inverse_refuses_a_tolerance_of_one():
    """`tol` must lie in (0, 1): a residual of 1 means no inverse at all, and `tol=1` would report the initial guess
    (residual < 1 for any convergent start) as converged. (mu30 L24)"""
    from hf_ext.hyperinf.linalg import schulz_inverse

    with pytest.raises(ValueError, match=r"`tol` must lie in \(0, 1\) or be None, got 1"):
        schulz_inverse(torch.eye(3, dtype=torch.float64) * 2, tol=1)
    _, info = schulz_inverse(torch.eye(3, dtype=torch.float64) * 2, init="frobenius", tol=0.999)
    assert info.converged


def test_config_refuses_zero_lissa_iterations_and_exact_in_half_precision():
    """`lissa_iterations` is a recursion depth >= 1 (0 returned `v / scale`, no inverse at all); method='exact' factors
    in float32/float64 only. Both refused by `validate`, naming the option. (mu30 I04, I06)"""
    from hf_ext.hyperinf import InfluenceConfig

    with pytest.raises(ValueError, match=r"`lissa_iterations` must be a positive int, got 0"):
        InfluenceConfig(method="lissa", lissa_iterations=0).validate()
    with pytest.raises(ValueError, match=r"method='exact' needs `dtype` torch.float32 or torch.float64"):
        InfluenceConfig(method="exact", dtype=torch.bfloat16).validate()
    InfluenceConfig(method="lissa", lissa_iterations=1).validate()
    InfluenceConfig(method="hyperinf", dtype=torch.bfloat16).validate()


def test_add_influence_column_refuses_scores_of_another_length_by_name():
    """mu30 E09 (lead): without the length check `datasets` raised its own message, naming neither argument."""
    import pytest
    from datasets import Dataset

    from hf_ext.hyperinf import add_influence_column

    data = Dataset.from_dict({"x": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"`scores` has 2 values but `dataset` has 3 rows"):
        add_influence_column(data, [0.1, 0.2])
    assert add_influence_column(data, [0.1, 0.2, 0.3])["influence"] == [0.1, 0.2, 0.3]
