"""Issue 22.3, layer pairing: `--eval_tasks` puts lm-eval task accuracy and its retention next to the perplexity of
every paired range of the sweep (the paper's retention curve)."""

import json

import pytest

from hf_ext.recipes.layer_parallel import main

TINY = [
    "--num_hidden_layers", "4", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
    "--num_key_value_heads", "1", "--block_size", "32", "--max_eval_blocks", "8", "--vocab_size", "512",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--disable_tqdm", "true",
    "--report_to", "none", "--use_cpu", "true", "--pretrain_steps", "8", "--pair_counts", "1",
    "--max_ppl_increase", "100", "--finetune", "false",
]  # fmt: skip
TASKS = ["hf_ext_domain", "hf_ext_cloze"]


def test_sweep_reports_task_accuracy_and_retention_per_range(tmp_path):
    pytest.importorskip("lm_eval")
    from transformers import AutoTokenizer, LlamaForCausalLM

    from hf_ext.evaluation import evaluate_model
    from hf_ext.models.layer_parallel import convert_to_layer_parallel

    out = tmp_path / "lp"
    results = main([*TINY, "--output_dir", str(out), "--eval_tasks", ",".join(TASKS), "--eval_limit", "6"])
    rows = results["sweep"]
    assert [(r["pairs"], r["start"], r["end"]) for r in rows] == [(0, 0, 0), (1, 0, 2), (1, 1, 3), (1, 2, 4)]
    for r in rows:  # task accuracy next to perplexity, for the source and each paired range
        assert set(r["task_scores"]) == set(TASKS) and all(0.0 <= v <= 1.0 for v in r["task_scores"].values())
        assert r["perplexity"] > 1
        for task, kept in r["task_retention"].items():
            base = rows[0]["task_scores"][task]
            assert kept is None if base == 0 else kept == pytest.approx(100 * r["task_scores"][task] / base)
    assert results["eval_tasks"] == {"tasks": TASKS, "metric": "acc", "num_fewshot": 0, "limit": 6}
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert json.loads((out / "results.json").read_text())["eval_tasks"]["tasks"] == TASKS
    table = (out / "sweep.md").read_text().splitlines()
    assert "| hf_ext_domain acc | hf_ext_cloze acc | retention % |" in table[0] and "| perplexity |" in table[0]
    assert len(table) == 2 + 4 and all(rng in "".join(table) for rng in ("[0, 2)", "[1, 3)", "[2, 4)"))
    assert (out / "sweep.png").stat().st_size > 0
    # the score of a range is that of the paired model, as lm-eval measures it directly
    tok = AutoTokenizer.from_pretrained(out / "source")
    paired = convert_to_layer_parallel(LlamaForCausalLM.from_pretrained(out / "source"), 2, 4)
    direct = evaluate_model(paired, tok, tasks=["hf_ext_cloze"], limit=6, batch_size=8)
    assert rows[3]["task_scores"]["hf_ext_cloze"] == pytest.approx(direct["results"]["hf_ext_cloze"]["acc,none"])


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--eval_tasks", "hf_ext_domain,,hf_ext_cloze"], "--eval_tasks must be comma-separated"),
        (["--eval_tasks", "hf_ext_domian"], "unknown lm-eval task"),
        (["--eval_tasks", "hf_ext_cloze", "--eval_metric", "acc_norm"], "not 'acc_norm'; pick the metric"),
        (["--eval_tasks", "hf_ext_cloze", "--eval_limit", "0"], "--eval_limit must be >= 1"),
        (
            ["--eval_tasks", "hf_ext_domain,hf_ext_cloze", "--eval_fewshot", "33"],
            "hf_ext_cloze has 32 few-shot items; --eval_fewshot 33 needs at most 32",  # was: failed after the sweep
        ),
        (["--eval_tasks", "hf_ext_cloze", "--skip_sweep", "--lp_start", "0", "--lp_end", "2"], "evaluates the ranges"),
    ],
)
def test_bad_eval_tasks_fail_before_any_output(tmp_path, extra, match):
    pytest.importorskip("lm_eval")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main([*TINY, "--output_dir", str(out), *extra])
    assert not out.exists()


def test_retention_per_task_and_mean():
    from hf_ext.recipes.layer_parallel import _add_retention

    rows = [{"task_scores": {"a": 0.5, "b": 0.0}}, {"task_scores": {"a": 0.4, "b": 0.2}}]
    _add_retention(rows, "acc")
    assert rows[0]["retention"] == pytest.approx(100) and rows[1]["retention"] == pytest.approx(80)
    assert rows[1]["task_retention"] == {"a": pytest.approx(80), "b": None}  # no retention where the source has 0
    rows = [{"task_scores": {"p": 10.0}}, {"task_scores": {"p": 12.5}}]
    _add_retention(rows, "perplexity")  # lower is better: source / paired
    assert rows[1]["retention"] == pytest.approx(80)
