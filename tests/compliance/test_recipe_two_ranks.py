"""scripts/compliance.py launched on 2 gloo ranks: it runs in one process, so it refuses up front on every rank.

Before, every rank filtered the whole corpus and wrote the same report files, and with --train_models each model
trained data-parallel on --train_batch_size blocks per rank (twice the blocks per optimizer step), so the DCG table
silently differed from one process (e.g. ALL +0.05 vs -0.05 at 3 steps) while `tokens_per_model` still reported the
one-process budget.
"""

from __future__ import annotations

import pytest

REFUSAL = "The compliance recipe runs in one process, but it was launched on 2"


@pytest.mark.distributed
def test_compliance_refuses_two_ranks_before_any_work(tmp_path, run_two_ranks):
    out = tmp_path / "comp"
    res = run_two_ranks(
        "scripts/compliance.py", "--vocab_size", "512", "--output_dir", str(out), timeout=180, check=False
    )
    assert res.returncode != 0, "the 2-rank launch ran to the end instead of being refused"
    assert REFUSAL in res.stderr and "--engine datatrove" in res.stderr, res.stderr[-3000:]
    assert "saved statistics" not in res.stdout
    assert not out.exists()
    assert "terminate called" not in res.stderr


def test_compliance_refuses_a_multi_process_environment(tmp_path, monkeypatch):
    from hf_ext.recipes.compliance import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "comp"
    with pytest.raises(ValueError, match=REFUSAL):
        main(["--vocab_size", "512", "--output_dir", str(out)])
    assert not out.exists()
