"""scripts/cubic_newton.py launched on 2 gloo ranks: it runs in one process, so it refuses up front on every rank.

Before, every rank ran the whole float64 study and wrote cubic_newton_results.json and cubic_newton.png itself (each
rank also removing an earlier run's files), with nothing saying the launch was pointless. The warmup recipe is
data-parallel under the same launch (its 2-rank numbers equal one process on the same global batch) and is not
refused; its held-out loss is the main process's over every block once (a distributed evaluate() padded the last
rank's share with a repeated block, which entered the mean when the number of blocks was odd): checked by
test_warmup_two_ranks_equal_one_process_with_an_odd_number_of_eval_blocks in tests/optim/test_two_rank_checks.py, one
launch shared with the other 2-rank checks of hf_ext.optim.
"""

from __future__ import annotations

import pytest

TINY_CUBIC = ["--problems", "logistic", "--methods", "sgd,cn", "--batch_sizes", "1", "--oracle_budget", "8",
              "--n_samples", "50", "--n_features", "14", "--eval_points", "2"]  # fmt: skip
REFUSAL = "The cubic_newton recipe runs in one process, but it was launched on 2"


# extended: a ~20-40 s torchrun launch for a refusal that happens before any work; the fast suite keeps the same
# refusal in test_cubic_newton_refuses_a_multi_process_environment (WORLD_SIZE=2, as torchrun sets it) and 2-rank
# launches of recipes in tests/optim/test_two_rank_checks.py (test_warmup_two_ranks_equal_one_process_with_an_odd_*)
@pytest.mark.extended
@pytest.mark.distributed
def test_cubic_newton_refuses_two_ranks_before_any_work(tmp_path, run_two_ranks):
    out = tmp_path / "cn"
    res = run_two_ranks("scripts/cubic_newton.py", *TINY_CUBIC, "--output_dir", str(out), timeout=180, check=False)
    assert res.returncode != 0, "the 2-rank launch ran to the end instead of being refused"
    assert REFUSAL in res.stderr and "python scripts/cubic_newton.py" in res.stderr, res.stderr[-3000:]
    assert "[cubic_newton]" not in res.stdout  # no rank started the study
    assert not out.exists()
    assert "terminate called" not in res.stderr


def test_cubic_newton_refuses_a_multi_process_environment(tmp_path, monkeypatch):
    from hf_ext.recipes.cubic_newton import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "cn"
    with pytest.raises(ValueError, match=REFUSAL):
        main([*TINY_CUBIC, "--output_dir", str(out)])
    assert not out.exists()
