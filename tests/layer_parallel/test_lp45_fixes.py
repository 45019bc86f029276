"""Audit pass 38 (lp45): `pairing_ranges` checks the types of its arguments and names the wrong one."""

import numpy as np
import pytest

from hf_ext.models.layer_parallel.sweep import pairing_ranges


@pytest.mark.parametrize(
    "args, message",
    [
        ((6.0, [1]), r"num_layers must be an integer, got 6\.0"),
        ((None,), r"num_layers must be an integer, got None"),
        ((6, [1], 1.5), r"stride must be an integer, got 1\.5"),
        ((6, [1], True), r"stride must be an integer, got True"),
        ((6, [1.5]), r"pair_counts must hold integer numbers of pairs.*got 1\.5"),
        ((6, ["1"]), r"pair_counts must hold integer numbers of pairs.*got '1'"),
        ((6, [True]), r"pair_counts must hold integer numbers of pairs.*got True"),
        ((6, 2), r"pair_counts must be a list.*For one count pass \[2\]"),
        ((6, "12"), r"pair_counts must be a list.*got '12'"),
    ],
    ids=[
        "float_layers",
        "none_layers",
        "float_stride",
        "bool_stride",
        "float_count",
        "str_count",
        "bool_count",
        "bare_int_counts",
        "string_counts",
    ],
)
def test_wrong_argument_types_are_named(args, message):
    """Each used to fail with a raw TypeError that named no argument ("'float' object cannot be interpreted as an
    integer", "'int' object is not iterable", "'<=' not supported ...") or, for bools, ran as the integer 1."""
    with pytest.raises(TypeError, match=message):
        pairing_ranges(*args)


def test_numpy_integers_give_python_int_ranges():
    ranges = pairing_ranges(np.int64(6), [np.int64(1)], np.int64(2))
    assert ranges == [(0, 2), (2, 4), (4, 6)]
    assert all(type(x) is int for r in ranges for x in r)  # the end was an np.int64, which JSON cannot write
    assert pairing_ranges(6, (1, 2)) == pairing_ranges(6, [1, 2])
