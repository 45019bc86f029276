"""--dcg_lower_is_better takes its values in any case, as transformers' boolean flags take True / FALSE (rv27 note:
`--dcg_lower_is_better True` was refused, its message listing `auto, true, false`)."""

from __future__ import annotations

import pytest

from .test_cp26_fixes import COMP_LOSS, FULL_LOSS, LOSS_GAPS, _dcg_cli


@pytest.mark.parametrize("value", ["True", "TRUE", " true "])
def test_dcg_lower_is_better_takes_any_case(tmp_path, value):
    res = _dcg_cli(tmp_path, FULL_LOSS, COMP_LOSS, "--dcg_lower_is_better", value)
    assert {r["task"]: r["gap"] for r in res["dcg"]["rows"]} == pytest.approx(LOSS_GAPS)


def test_dcg_lower_is_better_auto_in_another_case_is_still_the_default(tmp_path):
    with pytest.raises(ValueError, match=r"tasks a, b, c are bare scores .*--dcg_lower_is_better true"):
        _dcg_cli(tmp_path, FULL_LOSS, COMP_LOSS, "--dcg_lower_is_better", "Auto")
    with pytest.raises(ValueError, match="--dcg_lower_is_better must be one of auto, true, false"):
        _dcg_cli(tmp_path, FULL_LOSS, COMP_LOSS, "--dcg_lower_is_better", "yes")
