"""`reproduce(seeds=...)`: `seeds="12"` ran seeds 1 and 2, `True` one seed, `[0.9, 1.7]` seeds 0 and 1, and
`[0, 1, -1]` ran seeds 0 and 1 in full before seed -1's recipe refused it."""

from __future__ import annotations

import numpy as np
import pytest

from hf_ext.reproduce import Claim, Reproduction, reproduce
from hf_ext.reproduce.methods import REPRODUCTIONS


@pytest.fixture
def toy(monkeypatch):
    """A registered reproduction `toy_seeds` whose run records its seeds (and refuses a negative one, as the
    recipes' `--seed` check does)."""
    ran = []

    def run(seed, fast, workdir):
        if seed < 0:
            raise ValueError(f"--seed must be an integer in [0, 2**32), got {seed}.")
        ran.append(seed)
        return {"value": 1.0}

    spec = Reproduction("toy_seeds", "-", run, [Claim("value above 0", "-", lambda runs: ("1.0", True))])
    monkeypatch.setitem(REPRODUCTIONS, "toy_seeds", spec)
    return {"ran": ran, "spec": spec}


@pytest.mark.parametrize(
    "bad, error",
    [
        ("3", TypeError),
        ("12", TypeError),
        (b"1", TypeError),
        (True, TypeError),
        (2.0, TypeError),
        (None.__class__, TypeError),
        ({0: 1}, TypeError),
        ([0.9, 1.7], ValueError),
        ([True, False], ValueError),
        ([0, 1, -1], ValueError),
        ([0, 2**32], ValueError),
        (["0"], ValueError),
        ([], ValueError),
        (0, ValueError),
        (-2, ValueError),
        ([1, 1], ValueError),
    ],
)
def test_bad_seeds_are_refused_by_name_before_any_run(toy, bad, error):
    with pytest.raises(error, match="seeds"):
        reproduce("toy_seeds", seeds=bad)
    assert toy["ran"] == []


def test_good_seeds_still_run(toy):
    assert reproduce("toy_seeds", seeds=2).seeds == [0, 1]
    assert reproduce("toy_seeds", seeds=(4, 2**32 - 1)).seeds == [4, 2**32 - 1]
    assert reproduce("toy_seeds", seeds=np.int64(1)).seeds == [0]
    assert reproduce("toy_seeds", seeds=np.array([5, 3])).seeds == [5, 3]
    assert reproduce("toy_seeds", seeds=range(2, 4)).seeds == [2, 3]
    assert toy["ran"] == [0, 1, 4, 2**32 - 1, 0, 5, 3, 2, 3]
