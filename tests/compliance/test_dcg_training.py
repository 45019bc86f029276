"""Issue 23.1: the compliance recipe measures the data compliance gap by training, in both of the paper's settings."""

from __future__ import annotations

import json

import pytest

from hf_ext.recipes.compliance import main

TINY = ["--train_models", "--train_steps", "3", "--continual_steps", "2", "--vocab_size", "512",
        "--train_batch_size", "4", "--model_hidden_size", "32", "--model_layers", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One --train_models run in both settings (and, where lm-eval is installed, its task DCG from a perplexity
    evaluation) shared by the tests that read its result and files: `(result, output folder)`."""
    out = tmp_path_factory.mktemp("dcg")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return main([*TINY, "--output_dir", str(out)]), out
    return main([*TINY, "--eval_tasks", "hf_ext_cloze", "--eval_metric", "perplexity", "--eval_limit", "5",
                 "--output_dir", str(out)]), out  # fmt: skip


def test_train_models_reports_both_settings_per_domain(trained):
    result, out_dir = trained
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
    saved = json.loads((out_dir / "dcg_trained.json").read_text())
    assert saved["scratch"] == out["scratch"]
    assert (out_dir / "dcg_trained.png").stat().st_size > 0
    assert "(b) continual pretraining" in (out_dir / "dcg_trained.md").read_text()


def test_train_models_task_dcg_from_lm_eval(trained, tmp_path):
    """Issue 22.3: the DCG is also computed from lm-evaluation-harness results of the trained models."""
    pytest.importorskip("lm_eval")
    result, out_dir = trained
    out = result["dcg_trained"]
    for key in ("scratch_tasks", "continual_tasks"):
        (row,) = out[key]["rows"]
        assert row["task"] == "hf_ext_cloze" and row["non_compliant"] > 1 and row["compliant"] > 1
        assert row["gap"] == pytest.approx(100 * (row["compliant"] - row["non_compliant"]) / row["non_compliant"])
    assert "lm-eval tasks (perplexity)" in (out_dir / "dcg_trained.md").read_text()
    with pytest.raises(ValueError, match="--train_models"):
        main(["--eval_tasks", "hf_ext_cloze", "--output_dir", str(tmp_path / "no")])


def test_task_dcg_with_a_zero_scoring_full_model_is_reported_not_fatal(tmp_path, monkeypatch):
    """A tiny model scores 0 accuracy on the cloze task: its relative task gap is n/a, and the run still finishes.
    And the loss-based gaps are on disk before lm-eval starts, so a failing evaluation loses nothing: what the folder
    holds when lm-eval is called is checked in the same run (lm-eval failing there would leave just that)."""
    pytest.importorskip("lm_eval")
    import hf_ext.evaluation.uses as uses

    out_dir = tmp_path / "a"
    on_disk = []  # the files as lm-eval finds them when it starts
    real = uses.compliance_gap

    def recording(*args, **kwargs):
        if not on_disk:
            on_disk.append(json.loads((out_dir / "dcg_trained.json").read_text()))
            on_disk.append((out_dir / "dcg_trained.md").read_text())
        return real(*args, **kwargs)

    monkeypatch.setattr(uses, "compliance_gap", recording)
    result = main([*TINY, "--eval_tasks", "hf_ext_cloze", "--eval_metric", "acc", "--eval_limit", "3",
                   "--continual_steps", "0", "--output_dir", str(out_dir)])  # fmt: skip
    (row,) = result["dcg_trained"]["scratch_tasks"]["rows"]
    assert row["non_compliant"] == 0 and row["gap"] is None
    assert result["dcg_trained"]["scratch_tasks"]["mean_gap"] is None
    assert "| n/a |" in (out_dir / "dcg_trained.md").read_text()
    assert json.loads((out_dir / "dcg_trained.json").read_text())["scratch_tasks"]["rows"][0]["gap"] is None

    saved, markdown = on_disk  # written before lm-eval started
    assert {r["task"] for r in saved["scratch"]["rows"]} >= {"ALL", "language"}
    assert saved["scratch"] == result["dcg_trained"]["scratch"]
    assert "(a) from scratch" in markdown


@pytest.mark.parametrize(
    "extra, flag",
    [(["--train_steps", "0"], "--train_steps"), (["--continual_steps", "-1"], "--continual_steps"),
     (["--model_hidden_size", "30"], "--model_hidden_size"), (["--train_learning_rate", "nan"], "--train_learning_rate")],
)  # fmt: skip
def test_train_models_arguments_are_checked_first(tmp_path, extra, flag):
    with pytest.raises(ValueError, match=f"{flag} must"):  # not just "unknown argument"
        main([*TINY, *extra, "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_cli_dcg_of_the_recipes_own_losses_agrees_with_dcg_trained(trained, tmp_path):
    """Audit cp26 F1: the held-out losses of dcg_trained.json passed back as --dcg_non_compliant/--dcg_compliant gave
    every gap the opposite sign (networking -1.69 in dcg_trained.json, +1.69 from the CLI). Bare scores name no metric:
    the CLI now refuses them unless --dcg_lower_is_better says which way they go, and with `true` the gaps are the
    recipe's own."""
    _, out_dir = trained
    saved = json.loads((out_dir / "dcg_trained.json").read_text())
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"url": f"https://example.org/{i}", "text": "a b c"}) + "\n" for i in (1, 2)))
    for key, full, comp in (("scratch", "full", "compliant"), ("continual", "full_continued", "compliant_continued")):
        (tmp_path / "full.json").write_text(json.dumps(saved["losses"][full]))
        (tmp_path / "comp.json").write_text(json.dumps(saved["losses"][comp]))
        argv = ["--dcg_non_compliant", str(tmp_path / "full.json"), "--dcg_compliant", str(tmp_path / "comp.json"),
                "--train_file", str(docs), "--vocab_size", "300"]  # fmt: skip
        with pytest.raises(ValueError, match="--dcg_lower_is_better true"):
            main([*argv, "--output_dir", str(tmp_path / "never")])
        result = main([*argv, "--dcg_lower_is_better", "true", "--output_dir", str(tmp_path / key)])
        cli = {r["task"]: r["gap"] for r in result["dcg"]["rows"]}
        recipe = {r["task"]: r["gap"] for r in saved[key]["rows"]}
        assert cli == pytest.approx(recipe, rel=1e-12) and set(cli) == set(recipe)
        assert all((cli[t] > 0) == (recipe[t] > 0) for t in recipe if recipe[t] != 0)
        # the recipe's mean leaves out ALL (the union of the domains); the CLI averages every task it is given
        domains = [t for t in recipe if t != "ALL"]
        assert saved[key]["mean_gap"] == pytest.approx(sum(cli[t] for t in domains) / len(domains), rel=1e-12)
