"""Issue 23.1: the compliance recipe measures the data compliance gap by training, in both of the paper's settings."""

from __future__ import annotations

import json

import pytest

from hf_ext.recipes.compliance import main

TINY = ["--train_models", "--train_steps", "3", "--continual_steps", "2", "--vocab_size", "512",
        "--train_batch_size", "4", "--model_hidden_size", "32", "--model_layers", "1"]  # fmt: skip


def test_train_models_reports_both_settings_per_domain(tmp_path):
    result = main([*TINY, "--output_dir", str(tmp_path)])
    out = result["dcg_trained"]
    domains = {r["task"] for r in out["scratch"]["rows"]}
    assert "ALL" in domains and "language" in domains and len(domains) >= 9
    assert {r["task"] for r in out["continual"]["rows"]} == domains
    assert set(out["losses"]) == {"full", "compliant", "full_continued", "compliant_continued"}
    for row in out["scratch"]["rows"]:  # the gap is the compliant model's relative loss increase
        full, comp = out["losses"]["full"][row["task"]], out["losses"]["compliant"][row["task"]]
        assert row["gap"] == pytest.approx(100 * (comp - full) / full)
    for key in ("scratch", "continual"):  # the mean is over the domains; ALL, their union, is not averaged in
        gaps = [r["gap"] for r in out[key]["rows"] if r["task"] != "ALL"]
        assert out[key]["mean_gap"] == pytest.approx(sum(gaps) / len(gaps), rel=1e-12)
    assert out["tokens_per_model"] == 3 * 4 * 64
    saved = json.loads((tmp_path / "dcg_trained.json").read_text())
    assert saved["scratch"] == out["scratch"]
    assert (tmp_path / "dcg_trained.png").stat().st_size > 0
    assert "(b) continual pretraining" in (tmp_path / "dcg_trained.md").read_text()


def test_train_models_task_dcg_from_lm_eval(tmp_path):
    """Issue 22.3: the DCG is also computed from lm-evaluation-harness results of the trained models."""
    pytest.importorskip("lm_eval")
    result = main([*TINY, "--eval_tasks", "hf_ext_cloze", "--eval_metric", "perplexity", "--eval_limit", "5",
                   "--output_dir", str(tmp_path)])  # fmt: skip
    out = result["dcg_trained"]
    for key in ("scratch_tasks", "continual_tasks"):
        (row,) = out[key]["rows"]
        assert row["task"] == "hf_ext_cloze" and row["non_compliant"] > 1 and row["compliant"] > 1
        assert row["gap"] == pytest.approx(100 * (row["compliant"] - row["non_compliant"]) / row["non_compliant"])
    assert "lm-eval tasks (perplexity)" in (tmp_path / "dcg_trained.md").read_text()
    with pytest.raises(ValueError, match="--train_models"):
        main(["--eval_tasks", "hf_ext_cloze", "--output_dir", str(tmp_path / "no")])


def test_task_dcg_with_a_zero_scoring_full_model_is_reported_not_fatal(tmp_path, monkeypatch):
    """A tiny model scores 0 accuracy on the cloze task: its relative task gap is n/a, and the run still finishes.
    And the loss-based gaps are on disk before lm-eval starts, so a failing evaluation loses nothing."""
    pytest.importorskip("lm_eval")
    result = main([*TINY, "--eval_tasks", "hf_ext_cloze", "--eval_metric", "acc", "--eval_limit", "3",
                   "--continual_steps", "0", "--output_dir", str(tmp_path / "a")])  # fmt: skip
    (row,) = result["dcg_trained"]["scratch_tasks"]["rows"]
    assert row["non_compliant"] == 0 and row["gap"] is None
    assert result["dcg_trained"]["scratch_tasks"]["mean_gap"] is None
    assert "| n/a |" in (tmp_path / "a" / "dcg_trained.md").read_text()
    assert json.loads((tmp_path / "a" / "dcg_trained.json").read_text())["scratch_tasks"]["rows"][0]["gap"] is None

    import hf_ext.evaluation.uses as uses

    def broken(*args, **kwargs):
        raise RuntimeError("lm-eval failed")

    monkeypatch.setattr(uses, "compliance_gap", broken)
    with pytest.raises(RuntimeError, match="lm-eval failed"):
        main([*TINY, "--eval_tasks", "hf_ext_cloze", "--continual_steps", "0", "--output_dir", str(tmp_path / "b")])
    saved = json.loads((tmp_path / "b" / "dcg_trained.json").read_text())
    assert {r["task"] for r in saved["scratch"]["rows"]} >= {"ALL", "language"}
    assert "(a) from scratch" in (tmp_path / "b" / "dcg_trained.md").read_text()


@pytest.mark.parametrize(
    "extra, flag",
    [(["--train_steps", "0"], "--train_steps"), (["--continual_steps", "-1"], "--continual_steps"),
     (["--model_hidden_size", "30"], "--model_hidden_size"), (["--train_learning_rate", "nan"], "--train_learning_rate")],
)  # fmt: skip
def test_train_models_arguments_are_checked_first(tmp_path, extra, flag):
    with pytest.raises(ValueError, match=f"{flag} must"):  # not just "unknown argument"
        main([*TINY, *extra, "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
