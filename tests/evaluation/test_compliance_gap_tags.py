"""`compliance_gap(results, results, tasks=<tag or group>)`: with models lm-eval expands a tag (the packaged
`hf_ext`: `hf_ext_domain` and `hf_ext_cloze`) into its tasks; with the results dicts of the same runs the tag was
looked up as a row of its own and refused with "tasks ['hf_ext'] are missing from one of the result sets"."""

import pytest

pytest.importorskip("lm_eval")

from hf_ext.evaluation import compliance_gap  # noqa: E402


def _results(scores: dict, group_subtasks: dict | None = None) -> dict:
    """lm-eval-shaped results: a float is an `acc` score, `None` a group row without scores of its own."""
    rows = {}
    for task, value in scores.items():
        rows[task] = {"name": task, "alias": task}
        if value is not None:
            rows[task] |= {"acc,none": value, "acc_stderr,none": 0.01}
    return {"results": rows, "group_subtasks": group_subtasks or {}}


FULL = _results({"hf_ext_domain": 0.5, "hf_ext_cloze": 0.4})
COMP = _results({"hf_ext_domain": 0.25, "hf_ext_cloze": 0.3})


def test_a_packaged_tag_compares_its_tasks():
    report = compliance_gap(FULL, COMP, tasks="hf_ext", metric="acc")
    assert {r["task"]: r["gap"] for r in report.rows} == pytest.approx({"hf_ext_cloze": 25.0, "hf_ext_domain": 50.0})
    assert report.mean_gap == pytest.approx(37.5)
    # the same as naming the tasks, or giving none (every task of the results)
    assert report.rows == compliance_gap(FULL, COMP, tasks=["hf_ext_cloze", "hf_ext_domain"]).rows
    assert report.rows == compliance_gap(FULL, COMP).rows
    # a tag beside one of its own tasks compares each task once
    assert [r["task"] for r in compliance_gap(FULL, COMP, tasks=["hf_ext_cloze", "hf_ext"]).rows] == [
        "hf_ext_cloze",
        "hf_ext_domain",
    ]


def test_a_task_the_results_lack_is_still_refused():
    with pytest.raises(ValueError, match=r"tasks \['hf_ext_cloze_url'\] are missing"):
        compliance_gap(FULL, COMP, tasks=["hf_ext_metadata"])  # a tag whose task these runs did not evaluate
    with pytest.raises(ValueError, match=r"tasks \['hf_ext_nope'\] are missing"):
        compliance_gap(FULL, COMP, tasks=["hf_ext", "hf_ext_nope"])


def test_a_group_compares_its_subtasks_or_its_own_scores():
    groups = {"g": ["g_a", "g_b"]}
    full = _results({"g": None, "g_a": 0.5, "g_b": 0.8}, groups)  # no aggregated score: lm-eval reports its tasks
    comp = _results({"g": None, "g_a": 0.4, "g_b": 0.8}, groups)
    assert [(r["task"], r["gap"]) for r in compliance_gap(full, comp, tasks="g").rows] == [
        ("g_a", pytest.approx(20.0)),
        ("g_b", 0.0),
    ]
    full = _results({"g": 0.65, "g_a": 0.5, "g_b": 0.8}, groups)  # aggregated: the group is one task
    comp = _results({"g": 0.6, "g_a": 0.4, "g_b": 0.8}, groups)
    assert [r["task"] for r in compliance_gap(full, comp, tasks="g").rows] == ["g"]


def test_an_lm_eval_tag_compares_its_tasks():
    full = _results({"arc_easy": 0.5, "arc_challenge": 0.2})
    comp = _results({"arc_easy": 0.4, "arc_challenge": 0.2})
    report = compliance_gap(full, comp, tasks="ai2_arc")
    assert [(r["task"], r["gap"]) for r in report.rows] == [("arc_challenge", 0.0), ("arc_easy", pytest.approx(20.0))]


def test_a_tag_of_an_include_path_compares_its_tasks(tmp_path):
    for task in ("mine_a", "mine_b"):  # the index reads the names and tags only
        (tmp_path / f"{task}.yaml").write_text(f"task: {task}\ntag: mine\ndataset_path: json\n")
    full, comp = _results({"mine_a": 0.5, "mine_b": 0.4}), _results({"mine_a": 0.5, "mine_b": 0.2})
    report = compliance_gap(full, comp, tasks="mine", include_path=str(tmp_path))
    assert [(r["task"], r["gap"]) for r in report.rows] == [("mine_a", 0.0), ("mine_b", pytest.approx(50.0))]
