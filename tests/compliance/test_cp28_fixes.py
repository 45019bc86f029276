"""Regression tests of audit pass 28 (compliance)."""

import pytest

from hf_ext.compliance import compute_dcg


def _lm_eval(task, key, value, higher_is_better):
    """Results shaped as lm-eval 0.4 writes them: scores under "results", the direction under "higher_is_better"."""
    metric = key.partition(",")[0]
    out = {"results": {task: {"alias": task, key: value}}, "group_subtasks": {task: []}}
    if higher_is_better is not None:
        out["higher_is_better"] = {task: {metric: higher_is_better}}
    return out


@pytest.mark.parametrize("metric", [None, "ter", "ter,none"])
def test_dcg_takes_the_direction_lm_eval_reports(metric):
    # cp28 F1: lm-eval's ter (and brier_score) is lower-is-better; the compliant model's higher TER is a cost
    full = _lm_eval("wmt16-de-en", "ter,none", 60.0, False)
    comp = _lm_eval("wmt16-de-en", "ter,none", 66.0, False)
    assert compute_dcg(full, comp, metric=metric).rows[0]["gap"] == pytest.approx(10.0)
    # read on either side: the other side without the direction (or a bare score) takes it
    bare = {"wmt16-de-en": 66.0}
    assert compute_dcg(full, bare, metric=metric).rows[0]["gap"] == pytest.approx(10.0)
    assert compute_dcg(_lm_eval("wmt16-de-en", "ter,none", 60.0, None), comp).rows[0]["gap"] == pytest.approx(10.0)
    # an explicit lower_is_better still wins
    assert compute_dcg(full, comp, metric=metric, lower_is_better=False).rows[0]["gap"] == pytest.approx(-10.0)


def test_dcg_declared_direction_is_per_task_and_the_name_rule_remains():
    full = _lm_eval("a", "brier_score,none", 0.5, False)
    full["results"]["b"] = {"brier_score,none": 0.5}  # no direction reported for b: the name rule (higher is better)
    comp = _lm_eval("a", "brier_score,none", 0.55, False)
    comp["results"]["b"] = {"brier_score,none": 0.55}
    gaps = {r["task"]: r["gap"] for r in compute_dcg(full, comp, metric="brier_score").rows}
    assert gaps == pytest.approx({"a": 10.0, "b": -10.0})
    # a perplexity without a reported direction is still lower-is-better by its name
    report = compute_dcg(
        _lm_eval("w", "word_perplexity,none", 10.0, None), _lm_eval("w", "word_perplexity,none", 12.0, None)
    )
    assert report.rows[0]["gap"] == pytest.approx(20.0)


def test_compliance_gap_on_results_dicts_takes_the_direction_lm_eval_reports():
    from hf_ext.evaluation import compliance_gap

    full = _lm_eval("wmt16-de-en", "ter,none", 60.0, False)
    comp = _lm_eval("wmt16-de-en", "ter,none", 66.0, False)
    report = compliance_gap(full, comp, metric="ter")
    assert report.rows[0]["gap"] == pytest.approx(10.0)


@pytest.mark.parametrize(
    "full, comp, flags, fix",
    [
        (
            {"arc": 0.5, "piqa": 0.7},
            {"arc": 0.45},
            ["--dcg_lower_is_better", "false"],
            "give both files the same tasks",
        ),
        ({"t": {"acc": 0.5}}, {"t": {"f1": 0.5}}, [], "--dcg_metric naming a key both report"),
        ({"t": {"acc": 0.0}}, {"t": {"acc": 0.5}}, [], "pass --dcg_absolute"),
        ({"t": {"acc": 0.5, "f1": 0.2}}, {"t": {"acc": 0.5, "f1": 0.2}}, [], "pass --dcg_metric <name>"),
        ({"t": {"acc": 0.5}}, {"t": {"acc": 0.5}}, ["--dcg_metric", "f1"], "as --dcg_metric, or remove this task"),
    ],
)
def test_cli_dcg_refusal_names_the_flags_not_python_arguments(tmp_path, full, comp, flags, fix):
    # cp28 F2: the refusal told a command-line user to pass tasks=[...], relative=False, undefined='nan' or metric=
    import json

    from hf_ext.recipes.compliance import main

    a, b = tmp_path / "full.json", tmp_path / "comp.json"
    a.write_text(json.dumps(full))
    b.write_text(json.dumps(comp))
    argv = ["--dcg_non_compliant", str(a), "--dcg_compliant", str(b), *flags, "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="do not give a DCG report") as info:
        main(argv)
    message = str(info.value)
    assert fix in message
    for python_argument in ("tasks=", "relative=", "undefined=", "metric="):
        assert python_argument not in message
