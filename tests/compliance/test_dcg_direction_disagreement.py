"""compute_dcg refuses a task whose metric the two lm-eval result sets declare with opposite directions.

Before, a task declared higher-is-better on one side and lower-is-better on the other was silently taken as
lower-is-better: scores 0.5 vs 0.4 gave the gap -0.1 with (True, False) or (False, True) and +0.1 with (True, True).
"""

import json

import pytest

from hf_ext.compliance import compute_dcg


def _results(score, higher_is_better):
    return {
        "results": {"t": {"alias": "t", "m,none": score, "m_stderr,none": 0.0}},
        "higher_is_better": {"t": {"m": higher_is_better}},
    }


@pytest.mark.parametrize("sides", [(True, False), (False, True)])
def test_opposite_declared_directions_are_refused(sides):
    with pytest.raises(ValueError, match=r"Task 't'.*opposite directions.*lower_is_better=\[\.\.\.\]"):
        compute_dcg(_results(0.5, sides[0]), _results(0.4, sides[1]), relative=False)
    # saying it resolves it
    report = compute_dcg(_results(0.5, sides[0]), _results(0.4, sides[1]), relative=False, lower_is_better=False)
    assert report.mean_gap == pytest.approx(0.1)


@pytest.mark.parametrize("sides,gap", [((True, True), 0.1), ((False, False), -0.1), ((True, None), 0.1)])
def test_agreeing_or_one_sided_declarations_decide(sides, gap):
    report = compute_dcg(_results(0.5, sides[0]), _results(0.4, sides[1]), relative=False)
    assert report.mean_gap == pytest.approx(gap)


def test_the_cli_names_its_flag(tmp_path):
    from hf_ext.recipes.compliance import ComplianceArguments, _dcg_from_files

    paths = []
    for name, score, hib in (("full", 0.5, True), ("comp", 0.4, False)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_results(score, hib)))
        paths.append(str(path))
    args = ComplianceArguments(dcg_non_compliant=paths[0], dcg_compliant=paths[1], dcg_absolute=True)
    with pytest.raises(ValueError, match="pass --dcg_lower_is_better true or false"):
        _dcg_from_files(args)
