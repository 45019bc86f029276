"""Tests from the mu30 mutation run over hf_ext/models/layer_parallel (each fails with its mutant applied, passes on
clean code)."""

import pytest

from hf_ext.models.layer_parallel.sweep import pairing_ranges

F, S = "full_attention", "sliding_attention"


def test_default_pair_counts_skip_a_count_whose_ranges_all_mix_attention_types():
    """With the default pair counts, a count none of whose ranges can be converted is left out (documented: only a
    requested count is refused): layers [f, f, s, f] pair (0, 1) only, so 2 pairs is skipped, not an error.
    (mu30 W02)"""
    assert pairing_ranges(4, layer_types=[F, F, S, F]) == [(0, 2)]
    with pytest.raises(ValueError, match="Every range of 2 pairs"):
        pairing_ranges(4, [1, 2], layer_types=[F, F, S, F])
