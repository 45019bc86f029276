"""Recipe audit (2026-12-01): bad DCG result files and flags the run would ignore fail before anything is written."""

import json

import pytest

from hf_ext.recipes.compliance import main


@pytest.mark.parametrize(
    "non_compliant, compliant, match",
    [
        ("{not json", '{"arc": 0.5}', r"--dcg_non_compliant=.* is not a JSON results file"),
        ('{"arc": 0.5}', '{"piqa": 0.4}', r"--dcg_non_compliant=.* and --dcg_compliant=.* do not give a DCG report"),
    ],
)
def test_bad_dcg_files_fail_before_the_retention_outputs(tmp_path, non_compliant, compliant, match):
    """They used to fail (a bare JSONDecodeError, or compute_dcg's message) only after filtering the corpus and
    writing retention_stats.json/.md and the plot."""
    (tmp_path / "full.json").write_text(non_compliant)
    (tmp_path / "comp.json").write_text(compliant)
    out = tmp_path / "never"
    argv = ["--dcg_non_compliant", str(tmp_path / "full.json"), "--dcg_compliant", str(tmp_path / "comp.json")]
    with pytest.raises(ValueError, match=match):
        main([*argv, "--output_dir", str(out)])
    assert not out.exists()


def test_dcg_report_from_files(tmp_path):
    """The report still comes out (computed up front, written after the statistics): relative gap by hand."""
    (tmp_path / "full.json").write_text(json.dumps({"arc": {"acc": 0.5}, "piqa": {"acc": 0.8}}))
    (tmp_path / "comp.json").write_text(json.dumps({"arc": {"acc": 0.4}, "piqa": {"acc": 0.8}}))
    docs = tmp_path / "docs.jsonl"  # two documents and a small tokenizer keep the retention part fast
    docs.write_text("".join(json.dumps({"url": f"https://example.org/{i}", "text": "a b c"}) + "\n" for i in (1, 2)))
    out = tmp_path / "o"
    argv = ["--dcg_non_compliant", str(tmp_path / "full.json"), "--dcg_compliant", str(tmp_path / "comp.json")]
    argv += ["--train_file", str(docs), "--vocab_size", "300"]
    result = main([*argv, "--dcg_metric", "acc", "--output_dir", str(out)])
    gaps = {r["task"]: r["gap"] for r in json.loads((out / "dcg.json").read_text())["rows"]}
    assert gaps == pytest.approx({"arc": (0.5 - 0.4) / 0.5 * 100, "piqa": 0.0})
    assert result["dcg"]["rows"] == json.loads((out / "dcg.json").read_text())["rows"]
    # a rerun without the DCG files leaves no dcg.json of the earlier run (was: the old report stayed, looking current)
    (out / "my_notes.txt").write_text("kept")
    main([*argv[4:], "--output_dir", str(out)])
    assert not (out / "dcg.json").exists() and (out / "retention_stats.json").is_file()
    assert (out / "my_notes.txt").read_text() == "kept"


@pytest.mark.parametrize("metric", ["word_perplexity", "bits_per_byte", "word_perplexity,none"])
def test_dcg_report_on_a_lower_is_better_metric_is_positive_when_compliance_costs(tmp_path, metric):
    """A perplexity-like --dcg_metric flips the gaps' sign, as `compute_dcg(lower_is_better=...)` and the evaluation
    helpers do: the compliant model at 25 against 20 costs 25% (was reported as -25%, and for lm-eval's own key
    `word_perplexity,none` still was until 2026-12-04)."""
    lm_eval = lambda v: {"results": {"wikitext": {f"{metric.partition(',')[0]},none": v}}}  # noqa: E731
    (tmp_path / "full.json").write_text(json.dumps(lm_eval(20.0)))
    (tmp_path / "comp.json").write_text(json.dumps(lm_eval(25.0)))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"url": f"https://example.org/{i}", "text": "a b c"}) + "\n" for i in (1, 2)))
    argv = ["--dcg_non_compliant", str(tmp_path / "full.json"), "--dcg_compliant", str(tmp_path / "comp.json")]
    argv += ["--train_file", str(docs), "--vocab_size", "300", "--dcg_metric", metric, "--output_dir", str(tmp_path / "o")]
    main(argv)
    rows = json.loads((tmp_path / "o" / "dcg.json").read_text())["rows"]
    assert {r["task"]: r["gap"] for r in rows} == pytest.approx({"wikitext": 25.0})


@pytest.mark.parametrize(
    "metric, full, comp",
    [
        ("word_perplexity,none", {"results": {"wikitext": {"word_perplexity,none": 20.0}}},
         {"results": {"wikitext": {"word_perplexity,none": 22.0}}}),
        (None, {"results": {"wikitext": {"alias": "wikitext", "word_perplexity,none": 20.0,
                                         "word_perplexity_stderr,none": "N/A"}}},
         {"results": {"wikitext": {"alias": "wikitext", "word_perplexity,none": 22.0,
                                   "word_perplexity_stderr,none": "N/A"}}}),
        (None, {"wikitext": {"perplexity": 20.0}}, {"wikitext": {"perplexity": 22.0}}),
    ],
)  # fmt: skip
def test_dcg_report_flips_a_perplexity_read_by_its_lm_eval_key_or_without_dcg_metric(tmp_path, metric, full, comp):
    """The recipe passed `lower_is_better=()` unless --dcg_metric was a bare perplexity name, which turned off
    compute_dcg's own detection: lm-eval's `word_perplexity,none` and a file whose only metric is a perplexity gave
    -10% where compute_dcg on the same files gives +10% (the compliant model is worse)."""
    from hf_ext.compliance import compute_dcg
    from hf_ext.recipes.compliance import ComplianceArguments, _dcg_from_files

    (tmp_path / "full.json").write_text(json.dumps(full))
    (tmp_path / "comp.json").write_text(json.dumps(comp))
    args = ComplianceArguments(
        dcg_non_compliant=str(tmp_path / "full.json"), dcg_compliant=str(tmp_path / "comp.json"), dcg_metric=metric,
        output_dir=str(tmp_path / "o"),
    )  # fmt: skip
    assert _dcg_from_files(args).mean_gap == pytest.approx(10.0)
    assert compute_dcg(full, comp, metric=metric).mean_gap == pytest.approx(10.0)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--train_steps", "50"], "--train_steps set the models of --train_models"),
        (["--seed", "3"], "--seed set the models of --train_models"),  # the only use of the seed
        (["--model_hidden_size", "128", "--model_layers", "4"], "--model_hidden_size, --model_layers set the models"),
        (["--eval_limit", "5"], "--eval_limit apply to the lm-eval scoring of --eval_tasks"),
        (["--train_models", "--eval_metric", "perplexity"], "--eval_metric apply to the lm-eval scoring"),
        (["--dcg_metric", "acc"], "--dcg_metric apply to the DCG report of --dcg_non_compliant"),
        (["--dcg_absolute", "true"], "--dcg_absolute apply to the DCG report"),
        (["--dataset_config_name", "en"], "--dataset_config_name is a config of --dataset_name"),
        (["--train_models", "--split", "test"], "--split test would train on other data"),
        # passed the recipe's old check (>= 16) and failed after loading and annotating the data
        (["--vocab_size", "64"], r"--vocab_size must be an int in \[2\d\d, \d+\] \(at least the byte alphabet"),
    ],
)
def test_flags_that_cannot_apply_are_refused_before_any_output(tmp_path, args, match):
    """Each ran to the end before, ignoring the flag; `--train_models --split test` trained the models on the
    held-out split they are scored on."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main([*args, "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--eval_tasks", "hf_ext_domain", "--eval_metric", "perplexity"],
         r"--eval_tasks: task 'hf_ext_domain' reports \['acc', 'acc_norm'\], not 'perplexity'; .*--eval_metric"),
        (["--eval_tasks", "hf_ext_domian"], r"--eval_tasks: unknown lm-eval task\(s\) \['hf_ext_domian'\]"),
    ],
)  # fmt: skip
def test_eval_tasks_and_metric_are_checked_before_the_models_are_trained(tmp_path, monkeypatch, extra, match):
    """Both failed only after the two models were trained, dcg_trained.{json,md} written and (for the metric) both
    lm-eval runs done: a ValueError from the score reader, and a KeyError for the misspelt task."""
    pytest.importorskip("lm_eval")
    import hf_ext.recipes.compliance as recipe

    trained = []
    monkeypatch.setattr(recipe, "train_and_measure_dcg", lambda *a, **k: trained.append(1) or {})
    out = tmp_path / "never"
    tiny = ["--train_models", "--train_steps", "2", "--continual_steps", "0", "--model_hidden_size", "16",
            "--model_layers", "1", "--train_block_size", "32", "--train_batch_size", "2", "--vocab_size", "300"]  # fmt: skip
    with pytest.raises(ValueError, match=match):
        main([*tiny, *extra, "--eval_limit", "2", "--output_dir", str(out)])
    assert not out.exists() and trained == []


def test_vocab_size_beside_tokenizer_name_is_refused(tmp_path, small_tokenizer):
    """The tokenizer of --tokenizer_name counts the tokens (and sizes the --train_models models): --vocab_size was
    silently ignored (outputs identical for 4096 and 9999), as pretrain, grape, ... refuse it."""
    small_tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--vocab_size sizes the tokenizer built on the fly, but the tokenizer of "
                       r"'.*tok' is loaded, so it would be ignored; drop --vocab_size \(or --tokenizer_name\)\.$"):
        main(["--tokenizer_name", str(tmp_path / "tok"), "--vocab_size", "9999", "--output_dir", str(out)])
    assert not out.exists()
