"""Mutation run 18: `select_lowest_influence` with `groups` keeps, in each group, the number of examples nearest to
`fraction * group size` (as without groups), not that number rounded down."""

import numpy as np
import pytest

from hf_ext.hyperinf import select_lowest_influence


@pytest.mark.parametrize(
    "fraction, keep_a, keep_b",
    [(0.35, 2, 1), (0.6, 3, 2), (0.15, 1, 1), (0.8, 4, 2)],  # 0.35 * (5, 3) = (1.75, 1.05); 0.6 * 3 = 1.8
)
def test_each_group_keeps_the_count_nearest_to_its_fraction(fraction, keep_a, keep_b):
    # group "a": 5 examples, group "b": 3, interleaved; brute force: the keep lowest scores of each group
    groups = np.array(["a", "b", "a", "a", "b", "a", "b", "a"])
    scores = np.array([0.3, -1.0, 0.1, 0.9, 0.2, -0.4, 0.5, 0.7])
    expected = []
    for name, keep in (("a", keep_a), ("b", keep_b)):
        members = [i for i in range(8) if groups[i] == name]
        expected += sorted(members, key=lambda i: scores[i])[:keep]
    kept = select_lowest_influence(scores, fraction, groups=groups)
    np.testing.assert_array_equal(kept, sorted(expected))
