"""`fp8_two_ranks`: the FP8 checks on 2 gloo ranks (tensor parallelism, amax reduction, the monitor under DDP), run in
ONE `torchrun --nproc_per_node 2` launch of tests/scripts/checks_in_turn.py that the modules checking them share
(`two_rank_checks_launch` of tests/conftest.py)."""

import os
import sys

import pytest

#: the scripts of scripts/ that tests/scripts/checks_in_turn.py runs, in this order (ddp_emulated's Trainer, which sets accelerate's
#: state up, last)
TWO_RANK_CHECKS = ("tp_fp8", "ddp_monitor", "ddp_emulated")


@pytest.fixture
def fp8_two_ranks(two_rank_checks_launch, repo_root, run_on_free_port):
    """`fp8_two_ranks(check)`: `(folder, stdout)` of one of `TWO_RANK_CHECKS`, all run in ONE launch of
    tests/scripts/checks_in_turn.py per test session (a launch costs each rank ~10 s of torch / transformers / torchao
    imports; each check used to be a launch of its own). The test fails, naming the check, unless both ranks
    finished that check."""
    script = os.path.join(repo_root, "tests", "scripts", "checks_in_turn.py")
    scripts = os.path.join(repo_root, "tests", "fp8", "scripts")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root}

    def launch(folder):
        return run_on_free_port(
            lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), script, scripts, str(folder), *TWO_RANK_CHECKS],
            cwd=repo_root, timeout=900, env=env,
        )  # fmt: skip

    return two_rank_checks_launch("fp8_two_ranks", launch, TWO_RANK_CHECKS)
