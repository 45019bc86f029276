"""Inputs the influence estimator used to mishandle: a multi-label (or multi-output) classifier's floating-point
label vector was refused as "token labels" of the wrong length; an empty example failed deep in the embedding; a
causal-LM example without a labelled next token (NaN loss, zero gradient) was scored 0 or shrank the evaluation mean
silently; a user `lissa_scale` whose series diverges but stays finite returned wrong scores."""

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from hf_ext.hyperinf import InfluenceEstimator, influence_from_gradients


def _multi_label_model(randomize_lora_b):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=64, num_labels=3, problem_type="multi_label_classification")  # fmt: skip
    lora = LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"])
    model = get_peft_model(BertForSequenceClassification(config).double(), lora)
    return randomize_lora_b(model).eval()


def _multi_label_examples(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(1, 64, (n,), generator=gen).tolist(),
         "labels": torch.randint(0, 2, (3,), generator=gen).double().tolist()}  # fmt: skip
        for n in lengths
    ]


@pytest.mark.parametrize("method", ["tracin", "hyperinf"])
def test_multi_label_classification_is_scored_as_its_own_loss_defines(method, reference_lora_gradients, randomize_lora_b):
    """Examples of 5-9 tokens with 3 multi-hot labels each (was: "example 0 has 3 labels for 5 input_ids")."""
    model = _multi_label_model(randomize_lora_b)
    train, val = _multi_label_examples([5, 7, 6, 9, 3], 2), _multi_label_examples([5, 8], 3)
    got = InfluenceEstimator(model, method, batch_size=2, dtype=torch.float64).fit(train).scores(val)
    expected = influence_from_gradients(
        reference_lora_gradients(model, train), reference_lora_gradients(model, val), method=method, dtype=torch.float64
    ).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
    # stored padding is cut from the token columns only, never from the label vector (3 labels, 3 real tokens here)
    padded = [{"input_ids": ex["input_ids"] + [0, 0], "attention_mask": [1] * len(ex["input_ids"]) + [0, 0],
               "labels": ex["labels"]} for ex in train]  # fmt: skip
    again = InfluenceEstimator(model, method, batch_size=2, dtype=torch.float64).fit(padded).scores(val)
    np.testing.assert_allclose(again, got, rtol=1e-9, atol=1e-12 * np.abs(got).max())


def _causal_model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2)  # fmt: skip
    return get_peft_model(LlamaForCausalLM(config).double(), LoraConfig(r=2, target_modules=["q_proj"])).eval()


def _causal(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": row, "labels": row} for row in torch.randint(3, 48, (n, 6), generator=gen).tolist()]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"input_ids": []}, "example 4 has an empty input_ids"),  # was: a float-indices error in the embedding
        ({"input_ids": [7], "labels": [7]}, "example 4 has no labelled next token"),  # NaN loss, zero gradient
        ({"input_ids": [7, 8, 9], "labels": [7, -100, -100]}, "example 4 has no labelled next token"),
        ({"input_ids": [7, 8, 9], "attention_mask": [1, 0, 0]}, "example 4 has no labelled next token"),
        # stored left padding: one real token, or one whose only label is the first real token (not a target)
        ({"input_ids": [0, 0, 7], "attention_mask": [0, 0, 1]}, "example 4 has no labelled next token"),
        ({"input_ids": [0, 7, 8], "labels": [-100, 7, -100], "attention_mask": [0, 1, 1]}, "example 4 has no labelled"),
    ],
)
@pytest.mark.parametrize("role", ["train", "eval"])
def test_an_example_without_a_loss_is_refused_by_index(bad, match, role):
    model = _causal_model()
    estimator = InfluenceEstimator(model, "tracin", dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        if role == "train":  # was: scored 0
            estimator.fit([*_causal(4, 1), bad])
        else:  # was: counted in the mean, every score shrunk by 4/5
            estimator.fit(_causal(4, 1)).scores([*_causal(4, 2), bad])


def _bert(head, num_labels):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=64, num_labels=num_labels)  # fmt: skip
    task = "TOKEN_CLS" if head is BertForTokenClassification else "SEQ_CLS"
    lora = LoraConfig(task_type=task, r=2, lora_alpha=4, target_modules=["query", "value"])
    return get_peft_model(head(config).double(), lora).eval()


def _labelled(n, seed, token_level):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(1, 64, (n, 5), generator=gen).tolist()
    return [{"input_ids": row, "labels": [i % 3] * 5 if token_level else i % 3} for i, row in enumerate(rows)]


@pytest.mark.parametrize(
    "head, bad",
    [
        (BertForSequenceClassification, {"input_ids": [5, 6, 7], "labels": -100}),
        (BertForTokenClassification, {"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}),
        # the only counted label sits on stored padding, cut before the forward
        (BertForTokenClassification, {"input_ids": [5, 6, 0], "attention_mask": [1, 1, 0], "labels": [-100, -100, 2]}),
    ],
)
@pytest.mark.parametrize("per_example", ["vmap", "loop"])
@pytest.mark.parametrize("role", ["train", "eval"])
def test_a_classification_example_without_a_counted_label_is_refused_by_index(head, bad, per_example, role):
    """Its loss is NaN and its gradient zero on every head, not only a causal LM's: it used to be scored 0 as a training
    example, or to shrink every score by 4/5 as the fifth evaluation example."""
    model = _bert(head, 3)
    token_level = head is BertForTokenClassification
    estimator = InfluenceEstimator(model, "tracin", dtype=torch.float64, per_example_gradients=per_example)
    with pytest.raises(ValueError, match="example 4 has no loss"):
        if role == "train":
            estimator.fit([*_labelled(4, 1, token_level), bad])
        else:
            estimator.fit(_labelled(4, 1, token_level)).scores([*_labelled(4, 2, token_level), bad])


def test_a_regression_target_of_minus_100_is_a_loss_like_any_other():
    """The check is on the loss, not on the label value: a regression head's mean squared error on -100.0 is finite."""
    model = _bert(BertForSequenceClassification, 1)
    rows = [{"input_ids": ex["input_ids"], "labels": float(i) - 2.0} for i, ex in enumerate(_labelled(5, 1, False))]
    rows[2]["labels"] = -100.0
    scores = InfluenceEstimator(model, "tracin", dtype=torch.float64).fit(rows).scores(rows[:2])
    assert np.isfinite(scores).all() and scores[2] != 0


def test_lissa_with_a_diverging_scale_is_refused_even_while_still_finite():
    """mu_max(F) = 2.27 and lambda = 0.10 here, so the series needs lissa_scale > 1.19; at 1.0 it grows by a factor
    below 1.2 per iteration and stays finite over 10, and the scores (correlation 0.48 with the exact solve) used to be
    returned."""
    gen = torch.Generator().manual_seed(0)
    train = {"w": torch.randn(40, 2, 8, generator=gen, dtype=torch.float64)}
    val = {"w": torch.randn(4, 2, 8, generator=gen, dtype=torch.float64)}
    flat = train["w"].reshape(40, -1)
    top = float(torch.linalg.eigvalsh(flat.T @ flat / 40)[-1])
    damping = 0.1 * float(train["w"].square().mean())
    assert (top + damping) / 2 > 1.0 > 0.6 * (top + damping) / 2  # 1.0 diverges, slowly
    with pytest.raises(ValueError, match="LiSSA diverged.*lissa_scale=1"):
        influence_from_gradients(train, val, "lissa", dtype=torch.float64, lissa_iterations=10, lissa_scale=1.0)
    # a converging scale is accepted and approaches the exact damped solve; so is the default trace bound
    exact = influence_from_gradients(train, val, "exact", dtype=torch.float64, exact_curvature="fim")
    got = influence_from_gradients(train, val, "lissa", dtype=torch.float64, lissa_iterations=60, lissa_scale=1.5)
    assert float(torch.corrcoef(torch.stack([got, exact]))[0, 1]) > 0.999
    influence_from_gradients(train, val, "lissa", dtype=torch.float64, lissa_iterations=60)
