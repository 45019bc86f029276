"""`fog_two_ranks`: the FOG checks on 2 gloo ranks (tensor parallelism; FSDP2, DDP and FP8 all-gather), run in ONE
`torchrun --nproc_per_node 2` launch of tests/scripts/checks_in_turn.py that the modules checking them share
(`two_rank_checks_launch` of tests/conftest.py)."""

import os
import sys

import pytest

#: the scripts of scripts/ that tests/scripts/checks_in_turn.py runs, in this order (scale_out's Accelerator, which sets accelerate's
#: state up, last)
TWO_RANK_CHECKS = ("tp_fog", "scale_out")


@pytest.fixture
def fog_two_ranks(two_rank_checks_launch, repo_root, run_on_free_port):
    """`fog_two_ranks(check)`: `(folder, stdout)` of one of `TWO_RANK_CHECKS`, all run in ONE launch of
    tests/scripts/checks_in_turn.py per test session (a launch costs each rank ~10 s of torch / transformers imports; each
    check used to be a launch of its own). The test fails, naming the check, unless both ranks finished that check."""
    script = os.path.join(repo_root, "tests", "scripts", "checks_in_turn.py")
    scripts = os.path.join(repo_root, "tests", "fog", "scripts")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root}

    def launch(folder):
        return run_on_free_port(
            lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), script, scripts, str(folder), *TWO_RANK_CHECKS],
            cwd=repo_root, timeout=900, env=env,
        )  # fmt: skip

    return two_rank_checks_launch("fog_two_ranks", launch, TWO_RANK_CHECKS)
