"""`fp8_two_ranks`: the FP8 checks on 2 gloo ranks (tensor parallelism, amax reduction, the monitor under DDP), run in
ONE `torchrun --nproc_per_node 2` launch of scripts/two_rank_checks.py that the modules checking them share."""

import json
import os
import sys

import pytest

#: the scripts that scripts/two_rank_checks.py runs, in this order (ddp_emulated's Trainer, which sets accelerate's
#: state up, last)
TWO_RANK_CHECKS = ("tp_fp8", "ddp_monitor", "ddp_emulated")

_LAUNCHES: dict = {}


def shared_launch(tmp_path_factory, key, launch):
    """`launch(folder)` -> `CompletedProcess`, run once per test session and recorded as a dict (`folder`,
    `returncode`, `stdout`, `stderr`). Under pytest-xdist the workers share it: the first to need it launches under a
    file lock in the run's common temporary folder, the others wait for the lock and read its record."""
    if key in _LAUNCHES:
        return _LAUNCHES[key]
    try:
        import fcntl
    except ImportError:  # no file locks: each worker launches its own
        fcntl = None

    def run(folder):
        folder.mkdir()
        res = launch(folder)
        return dict(folder=str(folder), returncode=res.returncode, stdout=res.stdout, stderr=res.stderr)

    if os.environ.get("PYTEST_XDIST_WORKER") is None or fcntl is None:
        record = run(tmp_path_factory.mktemp(key, numbered=True) / "out")
    else:
        root = tmp_path_factory.getbasetemp().parent  # shared by this run's workers (and only by them)
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = root / f"{key}.json"
            if path.exists():
                record = json.loads(path.read_text())
            else:
                record = run(root / key)
                path.write_text(json.dumps(record))
    _LAUNCHES[key] = record
    return record


def check_result(record, check, checks, launch_failure):
    """`(folder, stdout)` of `check` in a two_rank_checks.py launch: its output folder and the part of the launch's
    stdout that it printed. Fails, naming the check, unless both ranks finished it (each writes `passed.rank<r>`)."""
    from pathlib import Path

    folder = Path(record["folder"]) / check
    if not all((folder / f"passed.rank{rank}").exists() for rank in (0, 1)):
        started = f"two_rank_checks: {check}\n" in record["stderr"]
        pytest.fail(
            f"the two-rank check {check!r} "
            + ("did not pass on both ranks" if started else "was not reached (an earlier check of the launch failed)")
            + f" (launch exit code {record['returncode']}; each check prints 'two_rank_checks: <name>' to stderr as it "
            f"starts):\n{launch_failure(record['stderr'])}"
        )
    stdout = record["stdout"]
    start = stdout.index(f"two_rank_checks: {check}\n")
    later = [stdout.find(f"two_rank_checks: {c}\n", start) for c in checks[checks.index(check) + 1 :]]
    end = min([i for i in later if i >= 0], default=len(stdout))
    return folder, stdout[start:end]


@pytest.fixture
def fp8_two_ranks(tmp_path_factory, repo_root, run_on_free_port, launch_failure):
    """`fp8_two_ranks(check)`: `(folder, stdout)` of one of `TWO_RANK_CHECKS`, all run in ONE launch of
    scripts/two_rank_checks.py per test session (a launch costs each rank ~10 s of torch / transformers / torchao
    imports; each check used to be a launch of its own). The test fails, naming the check, unless both ranks
    finished that check."""
    script = os.path.join(repo_root, "tests", "fp8", "scripts", "two_rank_checks.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root}

    def launch(folder):
        return run_on_free_port(
            lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), script, str(folder), *TWO_RANK_CHECKS],
            cwd=repo_root, timeout=900, env=env,
        )  # fmt: skip

    record = shared_launch(tmp_path_factory, "fp8_two_ranks", launch)
    return lambda check: check_result(record, check, TWO_RANK_CHECKS, launch_failure)
