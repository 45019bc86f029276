"""Issue 15 item 6: under data parallelism the FP8 health statistics are pooled over ranks before any decision."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _free_port() -> int:
    import socket

    with socket.socket() as sock:  # the machine is shared: take a port nobody holds now
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_two_ranks_pool_kurtosis_and_decide_together(tmp_path, repo_root):
    script = os.path.join(repo_root, "tests", "fp8", "scripts", "ddp_monitor.py")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), script, str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    rank0, rank1 = json.loads((tmp_path / "ddp_monitor.json").read_text())
    assert rank0["local_means"][1] > 10 * rank0["local_means"][0]  # the ranks saw very different data ...
    assert rank0["stats"] == rank1["stats"]  # ... yet hold identical statistics
    assert rank0["stats"]["qkv_input/kurtosis/layer_1"] == pytest.approx(rank0["pooled"], rel=1e-9)
    assert rank0["stop"] is True and rank1["stop"] is True  # and act together
