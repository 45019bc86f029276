"""scripts/hyperinf.py launched on 2 gloo ranks: it runs in one process, so it refuses up front on every rank.

Before, the run finished with exit code 0 but every Trainer run was data-parallel (twice the global batch) while each
rank computed the influence scores on its own and wrote the same files: the tiny test run's AUCs were 0.74 / 0.71 /
0.71 (HyperINF / DataInf / TracIn) against 0.68 / 0.48 / 0.32 in one process, with nothing saying so.
"""

from __future__ import annotations

import pytest

from .test_recipe import TINY

REFUSAL = "The hyperinf recipe runs in one process, but it was launched on 2"


# extended: a ~20-40 s torchrun launch for a refusal that happens before any work; the fast suite keeps the same
# refusal in test_hyperinf_refuses_a_multi_process_environment below (WORLD_SIZE=2, as torchrun sets it)
@pytest.mark.extended
@pytest.mark.distributed
def test_hyperinf_refuses_two_ranks_before_any_work(tmp_path, run_two_ranks):
    out = tmp_path / "hi"
    res = run_two_ranks(
        "scripts/hyperinf.py", *TINY, "--use_cpu", "true", "--output_dir", str(out), timeout=180, check=False
    )
    assert res.returncode != 0, "the 2-rank launch ran to the end instead of being refused"
    assert REFUSAL in res.stderr and "python scripts/hyperinf.py" in res.stderr, res.stderr[-3000:]
    assert not out.exists()
    assert "terminate called" not in res.stderr


def test_hyperinf_refuses_a_multi_process_environment(tmp_path, monkeypatch):
    """The refusal of the 2-rank launch above, in-process: WORLD_SIZE=2 (what torchrun sets) is refused on the spot,
    before the arguments are parsed or anything is written."""
    from hf_ext.recipes.hyperinf import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "hi"
    with pytest.raises(ValueError, match=REFUSAL) as err:
        main([*TINY, "--use_cpu", "true", "--output_dir", str(out)])
    assert "python scripts/hyperinf.py" in str(err.value)
    assert "InfluenceEstimator" in str(err.value)  # the data-parallel route for the influence computation itself
    assert not out.exists()
