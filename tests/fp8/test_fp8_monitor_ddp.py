"""Issue 15 item 6: under data parallelism the FP8 health statistics are pooled over ranks before any decision."""

from __future__ import annotations

import json

import pytest


@pytest.mark.distributed
def test_two_ranks_pool_kurtosis_and_decide_together(fp8_two_ranks):
    folder, _ = fp8_two_ranks("ddp_monitor")  # scripts/ddp_monitor.py, in the shared two-rank FP8 launch
    rank0, rank1 = json.loads((folder / "ddp_monitor.json").read_text())
    assert rank0["local_means"][1] > 10 * rank0["local_means"][0]  # the ranks saw very different data ...
    assert rank0["stats"] == rank1["stats"]  # ... yet hold identical statistics
    assert rank0["stats"]["qkv_input/kurtosis/layer_1"] == pytest.approx(rank0["pooled"], rel=1e-9)
    assert rank0["stop"] is True and rank1["stop"] is True  # and act together
