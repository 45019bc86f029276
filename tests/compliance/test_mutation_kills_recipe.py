"""The compliance recipe: the saved compliant dataset, the absolute DCG report, and the data each DCG model trains on."""

import json

import pytest

from hf_ext.recipes import compliance as cp


def _docs(tmp_path, rows):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_saved_dataset_holds_exactly_the_compliant_documents(tmp_path):
    from datasets import load_from_disk

    from hf_ext.data import load_corpus

    out = tmp_path / "o"
    res = cp.main(["--vocab_size", "300", "--save_filtered", "true", "--output_dir", str(out)])
    kept = load_from_disk(str(out / "compliant_dataset"))
    assert len(kept) == res["overall"]["docs"] - res["overall"]["docs_removed"] > 0
    assert all(kept["robots_compliant"]) and len(kept) < len(load_corpus("train"))


def test_absolute_dcg_report_is_the_score_difference(tmp_path):
    """--dcg_absolute true: gaps are score differences (not percent of the full model's score)."""
    (tmp_path / "full.json").write_text(json.dumps({"arc": {"acc": 0.5}, "piqa": {"acc": 0.8}}))
    (tmp_path / "comp.json").write_text(json.dumps({"arc": {"acc": 0.4}, "piqa": {"acc": 0.8}}))
    rows = [{"url": f"https://example.org/{i}", "text": "a b c"} for i in (1, 2)]
    argv = ["--dcg_non_compliant", str(tmp_path / "full.json"), "--dcg_compliant", str(tmp_path / "comp.json")]
    argv += ["--train_file", str(_docs(tmp_path, rows)), "--vocab_size", "300", "--dcg_absolute", "true"]
    res = cp.main([*argv, "--output_dir", str(tmp_path / "o")])
    assert {r["task"]: r["gap"] for r in res["dcg"]["rows"]} == pytest.approx({"arc": 0.1, "piqa": 0.0})


def test_continual_setting_continues_each_model_on_its_own_data(monkeypatch, tmp_path):
    """(b) continual pretraining: the full model continues on all data, the compliant one on the non-compliant
    remainder only (the two parts together are the full data)."""
    calls = {}

    def record(model, blocks, steps, args, folder):
        calls[folder.rsplit("/", 1)[-1]] = (blocks, steps)
        return model

    monkeypatch.setattr(cp, "_train_lm", record)
    monkeypatch.setattr(cp, "_domain_losses", lambda model, eval_sets: dict.fromkeys(eval_sets, 1.0))
    argv = ["--train_models", "--train_steps", "3", "--continual_steps", "2", "--vocab_size", "512",
            "--train_batch_size", "4", "--model_hidden_size", "32", "--model_layers", "1"]  # fmt: skip
    cp.main([*argv, "--output_dir", str(tmp_path / "o")])
    full, compliant = calls["full"][0], calls["compliant"][0]
    fc, cc = calls["fc"][0], calls["cc"][0]
    assert calls["fc"][1] == calls["cc"][1] == 2 and calls["full"][1] == calls["compliant"][1] == 3
    assert len(fc) == len(full)
    assert 0 < len(cc) < len(full) and len(compliant) < len(full)
    # compliant + non-compliant documents are the full data (each part packed on its own: at most one block apart)
    assert abs(len(compliant) + len(cc) - len(full)) <= 1
