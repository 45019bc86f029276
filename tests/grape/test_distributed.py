"""Two gloo ranks on CPU compute identical mixture weights (before the broadcast guard) from different minibatches."""

from __future__ import annotations

import json

import pytest


@pytest.mark.distributed
def test_two_ranks_end_with_identical_weights(tmp_path, run_two_ranks):
    run_two_ranks("tests/grape/scripts/ddp_grape.py", tmp_path)
    result = json.loads((tmp_path / "ddp_result.json").read_text())
    fp0, fp1 = result["model_fingerprints"]
    assert fp0 == fp1  # the model's weights are identical on both ranks
    rank0, rank1 = result["weights"]
    assert rank0 == rank1  # bitwise identical weights, averages and update counts
    assert rank0[-1] == 3.0
    assert rank0[:3] != pytest.approx([1 / 3] * 3)  # the weights did move
    # Each rank measured its own minibatches: the local statistics differ before averaging.
    assert result["local_stats"][0] != result["local_stats"][1]
    # Before the broadcast guard: 3 task + 3 domain updates, each averaging a gradient and the statistics ...
    averaging = result["averaging"]
    assert averaging["n_averages"] == 12 and averaging["n_broadcasts"] == 6
    assert all(averaging["local_inputs_differ"])
    # ... every average is the mean over ranks (and the same on both), and the ranks computed the same weights
    assert averaging["max_mean_error"] < 1e-6
    assert averaging["max_pre_broadcast_diff"] < 1e-12
