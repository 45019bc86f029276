"""Mutation run 47: `stability_after_target` refuses a target of 0 (the documented range is (0, 1]); with `0 <=`
every evaluation would count as reaching the target at the first step."""

import pytest

from hf_ext.neuralgrok.metrics import stability_after_target, steps_to_accuracy


@pytest.mark.parametrize("target", [0, 0.0, -0.1])
def test_stability_after_target_refuses_a_target_of_zero_or_below(target):
    with pytest.raises(ValueError, match=r"must be a number in \(0, 1\]"):
        stability_after_target([1, 2, 3], [0.0, 0.5, 0.2], target=target)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        steps_to_accuracy([1, 2, 3], [0.0, 0.5, 0.2], target=target)


def test_stability_after_target_accepts_a_target_of_one():
    out = stability_after_target([1, 2, 3], [0.5, 1.0, 0.95], target=1.0, drop_margin=0.1)
    assert out["reached"] and out["accuracy_drops"] == 0
