"""Retention is a ratio of non-negative scores: a negative score (a metric such as mcc, in [-1, 1]) has none."""

import pytest

from hf_ext.evaluation import accuracy_retention
from hf_ext.recipes.layer_parallel import _add_retention


@pytest.mark.parametrize(
    ("original", "paired"),
    [
        ({"a": 0.5, "m": -0.2}, {"a": 0.5, "m": -0.1}),
        ({"a": 0.5, "m": 0.2}, {"a": 0.5, "m": -0.1}),
        ({"a": 0.5, "m": -0.2}, {"a": 0.5, "m": 0.1}),
    ],
)
def test_accuracy_retention_refuses_a_negative_score_naming_the_task(original, paired):
    # -0.1 / -0.2 would read as 50% kept although the paired model is better; 0.2 -> -0.1 as a negative percentage
    with pytest.raises(ValueError, match=r"'m'.*non-negative|non-negative.*'m'"):
        accuracy_retention(original, paired)


def test_accuracy_retention_of_non_negative_scores_is_unchanged():
    out = accuracy_retention({"a": 0.5, "b": 0.4}, {"a": 0.25, "b": 0.4})
    assert out["per_task"] == {"a": 50.0, "b": 100.0} and out["mean_retention"] == 75.0


def test_sweep_rows_leave_a_negative_score_out_of_the_mean():
    rows = [
        {"task_scores": {"a": 0.5, "m": -0.2}},
        {"task_scores": {"a": 0.25, "m": -0.1}},
        {"task_scores": {"a": 0.5, "m": 0.3}},
    ]
    _add_retention(rows, "acc")
    assert rows[1]["task_retention"] == {"a": 50.0, "m": None} and rows[1]["retention"] == 50.0
    assert rows[2]["task_retention"] == {"a": 100.0, "m": None} and rows[2]["retention"] == 100.0
    rows = [{"task_scores": {"a": 0.5, "m": 0.2}}, {"task_scores": {"a": 0.25, "m": -0.1}}]
    _add_retention(rows, "acc")
    assert rows[1]["task_retention"] == {"a": 50.0, "m": None}


def test_task_sweep_reports_nan_retention_for_a_negative_score_instead_of_failing_after_evaluating(monkeypatch):
    import math

    from transformers import LlamaConfig, LlamaForCausalLM

    import hf_ext.evaluation.uses as uses

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2)
    ).eval()
    scores = iter([(0.4, 0.5), (0.2, -0.1), (0.2, 0.25), (0.4, -0.5), (0.2, 0.25)])  # (acc-like, mcc-like) per model

    def fake_evaluate(*args, **kwargs):
        a, m = next(scores)
        return {"results": {"a": {"mcc,none": a}, "m": {"mcc,none": m}}}

    monkeypatch.setattr(uses, "evaluate_model", fake_evaluate)
    rows = uses.layer_pairing_task_sweep(model, None, [(0, 2), (2, 4)], tasks=["a", "m"], metric="mcc")
    assert rows[0]["retention"] == 100.0
    assert math.isnan(
        rows[1]["retention"]
    )  # -0.1 on m: no ratio (before: accuracy_retention's error, or 100 * -0.1/0.5)
    assert rows[2]["retention"] == 50.0  # 0.2/0.4 and 0.25/0.5
    rows = uses.layer_pairing_task_sweep(model, None, [(0, 2)], tasks=["a", "m"], metric="mcc")  # a negative source
    assert math.isnan(rows[0]["retention"]) and math.isnan(rows[1]["retention"])
