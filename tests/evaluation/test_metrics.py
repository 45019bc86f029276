"""The packaged `evaluate` metric modules load offline by path and agree with the package's own functions."""

import math

import numpy as np
import pytest

evaluate = pytest.importorskip("evaluate")

from hf_ext.evaluation import metric_path  # noqa: E402
from hf_ext.evaluation.scores import accuracy_retention, task_scores  # noqa: E402


def test_data_compliance_gap_matches_compute_dcg(load):
    from hf_ext.compliance import compute_dcg

    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(6)]
    full, comp = rng.uniform(0.3, 0.8, 6).tolist(), rng.uniform(0.3, 0.8, 6).tolist()
    full[5], comp[5] = 20.0, 25.0  # a perplexity task
    mod = load("data_compliance_gap")
    for relative in (True, False):
        out = mod.compute(predictions=comp, references=full, tasks=tasks, relative=relative, lower_is_better=["t5"])
        ref = compute_dcg(dict(zip(tasks, full)), dict(zip(tasks, comp)), relative=relative, lower_is_better=["t5"])
        assert math.isclose(out["dcg"], ref.mean_gap, rel_tol=1e-12)
        assert out["per_task"] == pytest.approx({r["task"]: r["gap"] for r in ref.rows}, rel=1e-12)
    # the compliant model is worse on the perplexity task (25 > 20): a positive gap
    assert out["per_task"]["t5"] == pytest.approx(5.0)
    # streaming with add_batch gives the same result
    for i in range(0, 6, 2):
        mod.add_batch(predictions=comp[i : i + 2], references=full[i : i + 2], tasks=tasks[i : i + 2])
    assert mod.compute(lower_is_better=["t5"])["dcg"] == pytest.approx(
        compute_dcg(dict(zip(tasks, full)), dict(zip(tasks, comp)), lower_is_better=["t5"]).mean_gap
    )
    with pytest.raises(ValueError, match="each task once"):
        mod.compute(predictions=[0.1, 0.2], references=[0.1, 0.2], tasks=["a", "a"])


def test_layer_pairing_retention(load):
    out = load("layer_pairing_retention").compute(
        predictions=[0.57, 0.76, 22.0], references=[0.60, 0.80, 20.0], tasks=["a", "b", "ppl"], lower_is_better=["ppl"]
    )
    assert out["per_task"] == pytest.approx({"a": 95.0, "b": 95.0, "ppl": 100 * 20 / 22})
    assert out["min_retention"] == pytest.approx(100 * 20 / 22)
    assert out == accuracy_retention(
        {"a": 0.6, "b": 0.8, "ppl": 20.0}, {"a": 0.57, "b": 0.76, "ppl": 22.0}, lower_is_better=["ppl"]
    )


def test_retention_reads_lm_eval_results():
    orig = {"results": {"x": {"alias": "x", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.6}}}
    paired = {"results": {"x": {"alias": "x", "acc,none": 0.45, "acc_stderr,none": 0.1, "acc_norm,none": 0.3}}}
    assert accuracy_retention(orig, paired, metric="acc")["mean_retention"] == pytest.approx(90.0)
    with pytest.raises(ValueError, match="metric=<name>"):
        task_scores(orig)
    with pytest.raises(ValueError, match="different tasks"):
        accuracy_retention({"a": 1.0}, {"b": 1.0})


def test_mislabeled_detection_matches_hyperinf_metrics(load):
    from hf_ext.hyperinf.metrics import recall_at_fraction, roc_auc

    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score  # scikit-learn comes with lm-eval

    rng = np.random.default_rng(1)
    noisy = (rng.random(200) < 0.2).astype(int)
    scores = rng.normal(size=200) + 1.5 * noisy
    scores[:20] = np.round(scores[:20])  # some ties
    out = load("mislabeled_detection").compute(
        predictions=scores.tolist(), references=noisy.tolist(), fractions=[0.1, 0.2, 0.5]
    )
    assert out["roc_auc"] == pytest.approx(roc_auc(scores, noisy), abs=1e-12)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(noisy, scores), abs=1e-9)
    for f in (0.1, 0.2, 0.5):
        assert out[f"recall@{f:g}"] == pytest.approx(recall_at_fraction(scores, noisy, f))
    assert out["recall@0.5"] > 0.5  # informative scores beat inspecting at random


@pytest.mark.parametrize("fractions", [[0.2, 0.2], [1 / 3, 0.3333331]])
def test_mislabeled_detection_refuses_fractions_that_share_a_key(load, fractions):
    """Two shares printed alike gave one `recall@` entry, the second silently replacing the first."""
    with pytest.raises(ValueError, match="same recall@ key twice"):
        load("mislabeled_detection").compute(predictions=[0.9, 0.1, 0.5], references=[1, 0, 0], fractions=fractions)


def test_canary_extraction_matches_memorization_functions(load, small_tokenizer):
    from hf_ext.federated.memorization import score_continuation, summarize_records

    truth = "The quick brown fox jumps over the lazy dog and keeps running through the quiet forest at night."
    preds = [truth, truth[:20] + "X" + truth[21:], "completely different text with nothing shared at all here", truth]
    refs = [truth] * 4
    lengths, reps, ids = [10, 10, 10, 50], [1, 1, 10, 10], ["a", "b", "c", "c"]
    window = 24
    out = load("canary_extraction").compute(
        predictions=preds, references=refs, prefix_lengths=lengths, replications=reps, canary_ids=ids,
        tokenizer=small_tokenizer, window=window,
    )  # fmt: skip
    records = []
    for p, r, n, k, i in zip(preds, refs, lengths, reps, ids):
        rec = score_continuation(small_tokenizer, r, p, window)
        records.append({**rec, "prefix_length": n, "replication": k, "canary_id": i})
    expected = summarize_records(records, [10, 50])
    assert out["per_replication"] == expected["per_replication"]
    assert {k: out[k] for k in expected["overall"]} == expected["overall"]
    # an exact copy is exact; a copy with one wrong character early on is approximate only; unrelated text is neither
    assert [r["exact"] for r in records[:3]] == [True, False, False]
    assert [r["approximate"] for r in records[:3]] == [True, True, False]
    assert out["exact"] == {10: pytest.approx(1 / 3), 50: 1.0} and out["num_canaries"] == 3
    with pytest.raises(ValueError, match="tokenizer"):
        load("canary_extraction").compute(
            predictions=["a"], references=["a"], prefix_lengths=[1], replications=[1], canary_ids=["a"]
        )


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="available"):
        metric_path("nope")
