"""Arguments checked before any evaluation runs, the `python -m hf_ext.evaluation` include path, lm-eval groups counted
once by the score readers, and the metric modules' docstring examples."""

import doctest
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from hf_ext.evaluation import accuracy_retention, compliance_gap, metric_path, task_dir, task_scores  # noqa: E402


@pytest.fixture(scope="module")
def model(small_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(small_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def test_evaluate_models_checks_every_model_and_shot_count_before_the_first_run(model, small_tokenizer, monkeypatch):
    import hf_ext.evaluation.harness as harness

    runs = []
    monkeypatch.setattr(harness, "evaluate_model", lambda m, **kw: runs.append(kw) or {"results": {}})
    bad_calls = [
        ({"ok": model, "missing": "/no/such/folder"}, 0, ValueError, r"models\['missing'\].*not a folder"),
        ({"ok": model, "junk": object()}, 0, TypeError, r"models\['junk'\].*PreTrainedModel"),
        ({"ok": model}, [0, -1], ValueError, "num_fewshot"),
        ({"ok": model}, [], ValueError, "num_fewshot"),
        ({"ok": model}, [0, 33], ValueError, "hf_ext_cloze has 32 few-shot items; num_fewshot=33 needs at most 32"),
    ]
    for models, shots, err, match in bad_calls:
        with pytest.raises(err, match=match):
            harness.evaluate_models(models, tasks="hf_ext_cloze", num_fewshot=shots, tokenizer=small_tokenizer)
        assert runs == [], "a model was evaluated before the bad argument was refused"
    with pytest.raises(ValueError, match="limit"):
        harness.evaluate_models({"ok": model}, num_fewshot=0, tokenizer=small_tokenizer, limit=0)
    assert runs == []
    harness.evaluate_models({"ok": model}, num_fewshot=[0, 2], tokenizer=small_tokenizer)
    assert [r["num_fewshot"] for r in runs] == [0, 2]


def test_evaluate_with_prefix_checks_shots_and_limit_before_any_work(model, small_tokenizer, monkeypatch):
    import hf_ext.evaluation.prompting as prompting

    def no_work(*args, **kwargs):
        raise AssertionError("the model was wrapped for lm-eval before the arguments were checked")

    monkeypatch.setattr(prompting, "_as_lm", no_work)
    for kwargs, name in (({"num_fewshot": -1}, "num_fewshot"), ({"num_fewshot": "2"}, "num_fewshot"),
                         ({"limit": 0}, "limit"), ({"limit": -2}, "limit")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            prompting.evaluate_with_prefix(model, small_tokenizer, tasks="hf_ext_cloze", prefix="x", **kwargs)


def test_a_shot_count_above_a_packaged_tasks_few_shot_pool_is_refused_before_any_work(model, small_tokenizer,
                                                                                       monkeypatch):  # fmt: skip
    """Was accepted, then lm-eval's sampler raised "Sample larger than population" while building the prompts, after
    the evaluations before it had run (their rows lost), without naming `num_fewshot`."""
    import hf_ext.evaluation.harness as harness
    import hf_ext.evaluation.prompting as prompting

    def no_work(*args, **kwargs):
        raise AssertionError("the model was wrapped for lm-eval before the shot count was checked")

    monkeypatch.setattr(harness, "_as_lm", no_work)
    monkeypatch.setattr(prompting, "_as_lm", no_work)
    pool = r"^hf_ext_cloze has 32 few-shot items; num_fewshot=33 needs at most 32\.$"
    with pytest.raises(ValueError, match=pool):  # the tag counts for each of its tasks (hf_ext_domain has 36)
        harness.evaluate_model(model, small_tokenizer, tasks="hf_ext", num_fewshot=33)
    with pytest.raises(ValueError, match="^hf_ext_cloze_url has 32 few-shot items; num_fewshot=33"):
        prompting.evaluate_with_prefix(model, small_tokenizer, tasks="hf_ext_cloze_url", prefix="x", num_fewshot=33)
    with pytest.raises(ValueError, match="^hf_ext_domain has 36 few-shot items; --eval_fewshot 37 needs at most 36"):
        harness.check_fewshot_pool(["hf_ext_domain"], [0, 37], "--eval_fewshot")
    harness.check_fewshot_pool(["hf_ext_domain", "hf_ext_cloze"], [None, 0, 32])  # the whole pool may be drawn
    harness.check_fewshot_pool(["arc_easy", "/some/task/folder"], [10**6])  # not packaged: left to lm-eval


@pytest.mark.parametrize(
    "argv, included",
    [
        (["validate", "--tasks", "hf_ext_cloze"], True),
        (["ls", "tasks"], True),
        (["run", "--model", "hf", "--tasks", "hf_ext_cloze"], True),
        (["--model", "hf", "--tasks", "hf_ext_cloze"], True),  # lm-eval's legacy form (no subcommand)
        (["ls", "tasks", "--include_path", "mine"], False),  # the user's own folder is left as given
        (["--help"], False),
        (["run"], False),  # lm-eval prints the run help
    ],
)
def test_wrapper_cli_puts_the_packaged_tasks_on_the_include_path(argv, included, monkeypatch):
    """`python -m hf_ext.evaluation ls tasks` lists and `... validate --tasks hf_ext_cloze` finds the packaged tasks
    (lm-eval's `ls` and `validate` take --include_path like `run`)."""
    import lm_eval.__main__

    from hf_ext.evaluation.__main__ import main

    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["x"])
    main(list(argv))
    assert seen[0][0] == "lm-eval" and seen[0][1 : 1 + len(argv)] == argv
    assert (seen[0][-2:] == ["--include_path", task_dir()]) is included
    assert seen[0].count("--include_path") <= 1


@pytest.mark.parametrize("form", [["--config", "{}"], ["--config={}"], ["-C", "{}"]])
@pytest.mark.parametrize("own", [True, False])
def test_wrapper_cli_keeps_the_include_path_of_a_config_file(form, own, tmp_path, monkeypatch):
    """`run --config cfg.yaml` whose YAML sets `include_path`: the user's folder is used as given (was: the packaged
    folder appended on the command line, which lm-eval ranks above the YAML, so the user's tasks were not found); a
    config without one still gets the packaged folder."""
    import lm_eval.__main__

    from hf_ext.evaluation.__main__ import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: hf\ntasks: my_task\n" + (f"include_path: {tmp_path}\n" if own else ""))
    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["x"])
    argv = ["run", *(a.format(cfg) for a in form)]
    main(list(argv))
    assert seen[0][1:] == (argv if own else [*argv, "--include_path", task_dir()])


def _lm_eval_results(scores: dict) -> dict:
    """lm-eval's output layout (0.4.13): an aggregated group (`both`: name, alias, sample_len, sample_count), a group
    without aggregation (`plain`: a row with its name only) and their tasks; `scores` = `{task: (acc, perplexity)}`."""
    rows = {}
    for task, (acc, ppl) in scores.items():
        rows[task] = {"name": task, "alias": task, "sample_len": 20, "acc,none": acc, "acc_stderr,none": "N/A"}
        if ppl is not None:
            rows[task] |= {"perplexity,none": ppl, "perplexity_stderr,none": "N/A"}
    rows["both"] |= {"sample_count": {"acc,none": 40}}
    rows["plain"] = {"alias": "plain", "name": "plain"}
    return {
        "results": rows,
        "groups": {"both": rows["both"]},
        "group_subtasks": {"both": ["a", "b"], "plain": ["c", "d"]},
    }


def test_score_readers_count_an_lm_eval_group_once():
    original = _lm_eval_results({"a": (0.4, 20.0), "b": (0.6, 30.0), "both": (0.5, None), "c": (0.8, 10.0),
                                 "d": (0.5, 12.0)})  # fmt: skip
    paired = _lm_eval_results({"a": (0.2, 25.0), "b": (0.6, 30.0), "both": (0.4, None), "c": (0.4, 10.0),
                               "d": (0.5, 16.0)})  # fmt: skip
    # the aggregated group is one benchmark; the group without aggregation is a heading, its tasks count
    assert task_scores(original, "acc") == {"both": 0.5, "c": 0.8, "d": 0.5}
    assert task_scores(original, "acc", keep=["a"]) == {"a": 0.4, "both": 0.5, "c": 0.8, "d": 0.5}
    ret = accuracy_retention(original, paired, metric="acc")
    assert ret["per_task"] == pytest.approx({"both": 80.0, "c": 50.0, "d": 100.0})
    assert ret["mean_retention"] == pytest.approx((80 + 50 + 100) / 3)
    # the same benchmarks as compute_dcg reads from the same output (aggregated group only: compute_dcg refuses the
    # name-only row of a group without aggregation)
    from hf_ext.compliance import compute_dcg

    for res in (original, paired):
        del res["results"]["plain"], res["group_subtasks"]["plain"]
    dcg_tasks = {r["task"] for r in compute_dcg(original, paired, metric="acc").rows}
    assert set(accuracy_retention(original, paired, metric="acc")["per_task"]) == dcg_tasks == {"both", "c", "d"}
    # lm-eval's bookkeeping (name, alias, sample_len) is not a metric: a one-metric task needs no metric=...
    single = {"results": {"x": {"name": "x", "alias": "x", "sample_len": 20, "acc,none": 0.5, "acc_stderr,none": 0.1}}}
    assert task_scores(single) == {"x": 0.5}


def test_tasks_under_a_subgroup_without_aggregation_count_inside_their_aggregated_group():
    """lm-eval aggregates a group over every leaf task below it, also those under a subgroup without aggregated metrics
    of its own (`top` -> `mid` -> `a`, `b`): `top` is the one benchmark (was: `a`, `b` and `top`, so the leaf tasks
    counted twice in retention and DCG means)."""
    from hf_ext.compliance import compute_dcg

    def res(a, b, top):
        return {
            "results": {
                "top": {"alias": "top", "acc,none": top, "acc_stderr,none": 0.01},
                "mid": {"alias": " - mid"},
                "a": {"alias": "  - a", "acc,none": a, "acc_stderr,none": 0.01},
                "b": {"alias": "  - b", "acc,none": b, "acc_stderr,none": 0.01},
                "c": {"alias": "c", "acc,none": 0.3, "acc_stderr,none": 0.01},
            },
            "group_subtasks": {"top": ["mid"], "mid": ["a", "b"], "c": []},
        }

    orig, paired = res(0.4, 0.6, 0.5), res(0.2, 0.6, 0.4)
    assert task_scores(orig, "acc") == {"top": 0.5, "c": 0.3}
    assert task_scores(orig, "acc", keep=["a"]) == {"top": 0.5, "a": 0.4, "c": 0.3}
    assert accuracy_retention(orig, paired, metric="acc")["per_task"] == pytest.approx({"top": 80.0, "c": 100.0})
    assert [r["task"] for r in compute_dcg(orig, paired, metric="acc").rows] == ["c", "top"]


def test_compliance_gap_on_a_perplexity_group():
    """compliance_gap's lower-is-better list names the benchmarks compute_dcg compares (not the group's members)."""
    from hf_ext.compliance import compute_dcg

    def ppl_group(a, b, group):
        return {
            "results": {
                "a": {"name": "a", "alias": "a", "sample_len": 5, "perplexity,none": a},
                "b": {"name": "b", "alias": "b", "sample_len": 5, "perplexity,none": b},
                "g": {"name": "g", "alias": "g", "sample_len": 10, "perplexity,none": group},
            },
            "group_subtasks": {"g": ["a", "b"]},
        }

    full, compliant = ppl_group(20.0, 30.0, 25.0), ppl_group(22.0, 33.0, 27.5)
    report = compliance_gap(full, compliant, metric="perplexity")
    assert [r["task"] for r in report.rows] == ["g"]
    assert report.mean_gap == pytest.approx(10.0)  # perplexity 10% higher: compliance costs 10%
    assert report.mean_gap == compute_dcg(full, compliant, metric="perplexity", lower_is_better=["g"]).mean_gap


@pytest.mark.parametrize(
    "name", ["data_compliance_gap", "layer_pairing_retention", "mislabeled_detection", "canary_extraction"]
)
def test_metric_docstring_examples_give_the_output_shown(name):
    path = Path(metric_path(name)) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_doc_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    test = doctest.DocTestParser().get_doctest(module._KWARGS_DESCRIPTION, {}, name, str(path), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_metric_module_keyword_checks(small_tokenizer):
    """canary_extraction with window=0 called unrelated text an exact extraction (every probe, rate 1.0);
    mislabeled_detection with one fraction failed iterating a float."""
    import evaluate

    ext = evaluate.load(metric_path("canary_extraction"))
    probe = dict(predictions=["completely unrelated words"], references=["the true canary text"], prefix_lengths=[10],
                 replications=[1], canary_ids=["a"], tokenizer=small_tokenizer)  # fmt: skip
    assert ext.compute(**probe, window=8)["exact_mean"] == 0.0
    for window in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="window"):
            ext.compute(**probe, window=window)
    for threshold in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="bleu_threshold"):
            ext.compute(**probe, bleu_threshold=threshold)
    det = evaluate.load(metric_path("mislabeled_detection"))
    scores = dict(predictions=[0.9, 0.1, 0.8, 0.2, 0.3], references=[1, 0, 1, 0, 0])
    assert det.compute(**scores, fractions=0.4) == det.compute(**scores, fractions=[0.4]) == {
        "roc_auc": 1.0, "recall@0.4": 1.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="fractions"):
        det.compute(**scores, fractions=[0.2, 1.5])


def test_results_rows_keep_filters_apart():
    """A metric under two filters (gsm8k's layout, as lm-eval 0.4.13 writes it) gives two distinguishable rows."""
    from hf_ext.evaluation import format_table, results_rows

    res = {
        "results": {
            "gen": {"name": "gen", "alias": "gen", "sample_len": 4, "exact_match,strict-match": 0.25,
                    "exact_match_stderr,strict-match": 0.1, "exact_match,flexible-extract": 0.75,
                    "exact_match_stderr,flexible-extract": 0.2},
            "mc": {"name": "mc", "alias": "mc", "sample_len": 4, "acc,none": 0.5, "acc_stderr,none": "N/A"},
        },
        "n-shot": {"gen": 0, "mc": 0},
    }  # fmt: skip
    rows = results_rows(res, "m")
    assert sorted(r["metric"] for r in rows) == ["acc", "exact_match,flexible-extract", "exact_match,strict-match"]
    got = {(r["task"], r["metric"]): (r["value"], r["stderr"], r["filter"]) for r in rows}
    assert got == {
        ("gen", "exact_match,strict-match"): (0.25, 0.1, "strict-match"),
        ("gen", "exact_match,flexible-extract"): (0.75, 0.2, "flexible-extract"),
        ("mc", "acc"): (0.5, None, "none"),
    }
    table = format_table(rows)
    assert "| exact_match,strict-match | 0.2500 | 0.1000 |" in table and "| mc | 0 | acc | 0.5000 |  |" in table


def test_evaluation_gives_a_model_its_train_mode_back(small_tokenizer):
    """lm-eval's HFLM calls model.eval() on a model object; evaluate_model / evaluate_with_prefix restore each module's
    mode (as causal_lm_eval_loss does), and still score in eval mode (dropout off)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.evaluation import evaluate_model, evaluate_with_prefix

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(small_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      attention_dropout=0.5)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    scores = []
    for run in (evaluate_model, evaluate_with_prefix):  # the prefix "" leaves the prompts as they are
        model.train()
        model.lm_head.eval()  # a mixed state must come back as it was, too
        res = run(model, small_tokenizer, tasks="hf_ext_cloze", limit=2, bootstrap_iters=0, num_fewshot=0)
        scores.append(res["results"]["hf_ext_cloze"]["perplexity,none"])
        assert model.training and model.model.layers[0].self_attn.training and not model.lm_head.training, run
    assert scores[0] == pytest.approx(scores[1], rel=1e-6)  # dropout (0.5) was off while scoring
