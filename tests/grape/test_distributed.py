"""Two gloo ranks on CPU compute identical mixture weights (before the broadcast guard) from different minibatches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.distributed
def test_two_ranks_end_with_identical_weights(tmp_path, repo_root):
    import socket

    with socket.socket() as sock:  # a port the OS says is free (29500 + n collides with other runs on the machine)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = os.path.join(repo_root, "tests", "grape", "scripts", "ddp_grape.py")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(port), script, str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
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
