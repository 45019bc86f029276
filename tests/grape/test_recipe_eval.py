"""The grape recipe compares mixture methods on the targets: held-out loss and lm-eval target-task accuracy."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from hf_ext.recipes.grape import main

TINY = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--reweight_batch_size", "4",
    "--reweight_mini_batch_size", "2", "--reweight_domains_every", "2", "--reweight_tasks_every", "2",
    "--source_domains", "text,numeric,networking,filesystem", "--disable_tqdm", "true", "--use_cpu", "true",
]  # fmt: skip


def _target_counts(task: str) -> dict[str, int]:
    """Test items of the packaged task per default GRAPE target (io_network, language_numeric)."""
    from hf_ext.evaluation import task_dir

    rows = [json.loads(x) for x in (Path(task_dir()) / "data" / f"{task}_test.jsonl").read_text().splitlines() if x]
    per = Counter(r.get("domain") or r["host"].split(".")[0].replace("-", "_") for r in rows)
    return {
        "io_network": per["networking"] + per["filesystem"],
        "language_numeric": per["language"] + per["numeric"] + per["datatypes"],
    }


def test_compare_methods_with_target_task_accuracy(tmp_path):
    pytest.importorskip("lm_eval")
    out = tmp_path / "cmp"
    limit = 26
    res = main(
        TINY
        + ["--max_steps", "2", "--output_dir", str(out), "--compare_methods", "grape,doremi,uniform"]
        + ["--eval_tasks", "hf_ext_domain,hf_ext_cloze", "--eval_limit", str(limit)]
    )
    methods = ["grape", "uniform", "doremi"]  # uniform is trained before doremi (its reference model)
    assert list(res["methods"]) == methods
    for m in methods:
        assert (out / m / "model.safetensors").is_file() and (out / m / "grape_results.json").is_file()
    saved = json.loads((out / "target_eval.json").read_text())
    assert list(saved["methods"]) == methods and saved["targets"] == ["io_network", "language_numeric"]
    counts = {task: _target_counts(task) for task in ("hf_ext_domain", "hf_ext_cloze")}
    assert counts["hf_ext_domain"]["io_network"] < limit and counts["hf_ext_cloze"]["io_network"] < limit
    for m in methods:
        metrics = saved["methods"][m]
        assert set(metrics["target_eval_loss"]) == {"io_network", "language_numeric"}
        scores = metrics["target_tasks"]
        assert set(scores) == {"all", "io_network", "language_numeric"}
        for scope, per_task in scores.items():
            assert set(per_task) == {"hf_ext_domain", "hf_ext_cloze"}
            assert set(per_task["hf_ext_domain"]) >= {"acc", "acc_norm", "acc_stderr", "n"}
            for task, values in per_task.items():
                assert 0.0 <= values["acc"] <= 1.0
                # restricted to the target's domains: the io_network target has fewer items than the limit
                expected = limit if scope == "all" else min(limit, counts[task][scope])
                assert values["n"] == expected, (m, scope, task)
        assert json.loads((out / m / "grape_results.json").read_text())["target_tasks"] == scores
    assert (out / "target_eval.png").is_file()

    lines = (out / "target_eval.md").read_text().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if line.startswith("| ")]
    assert [r[0] for r in rows] == methods  # one row per trained method
    acc_cols = [i for i, h in enumerate(head) if " acc" in h]
    assert {head[i] for i in acc_cols} >= {
        "hf_ext_domain acc (io_network)", "hf_ext_domain acc_norm (language_numeric)", "hf_ext_cloze acc (all)",
    }  # fmt: skip
    assert "loss io_network" in head and "ppl language_numeric" in head
    for r in rows:
        assert len(r) == len(head)
        for i in acc_cols:
            assert 0.0 <= float(r[i].split("±")[0]) <= 1.0


def test_bad_eval_arguments_fail_before_any_output(tmp_path):
    bad = [
        (["--eval_tasks", "hf_ext_domain,"], "--eval_tasks must be comma-separated"),
        (["--eval_tasks", "hf_ext_domian"], "unknown lm-eval task\\(s\\) \\['hf_ext_domian'\\]"),
        (["--eval_tasks", "hf_ext_domain,hf_ext_domain"], "names a task twice"),
        (["--eval_tasks", "hf_ext_domain", "--eval_limit", "0"], "--eval_limit"),
        (
            ["--eval_tasks", "hf_ext_domain", "--eval_num_fewshot", "37"],
            "hf_ext_domain has 36 few-shot items; --eval_num_fewshot 37 needs at most 36",
        ),
        (["--compare_methods", "grape,regmix"], "--compare_methods has unknown methods \\['regmix'\\]"),
        (["--compare_methods", "grape,doremi"], "doremi needs a reference model"),
    ]
    for i, (extra, match) in enumerate(bad):
        out = tmp_path / f"run{i}"
        with pytest.raises(ValueError, match=match):
            main(TINY + ["--max_steps", "2", "--output_dir", str(out)] + extra)
        assert not out.exists(), extra
