"""Seed runs for `reproduce(jobs=...)` tests with real worker processes: module-level functions in a module that
imports nothing heavy, so that spawned workers start fast.

The runs that must still be running when another seed's failure reaches `reproduce` wait for `reproduce` to shut its
process pool down ([`mark_pool_shutdown`] makes the pool write `POOL_SHUTDOWN` in the output folder as it does):
that happens only after the failure came back, however the processes were scheduled. A fixed sleep did not hold on
a loaded machine: the failing seed's process could be descheduled between its own marker and its exception reaching
the parent, so the other seed finished first and the next seed legitimately started."""

from __future__ import annotations

import os
import time

#: written in the output folder by the pool of [`mark_pool_shutdown`] when `reproduce` shuts it down
POOL_SHUTDOWN = "pool-shutdown"


def mark_pool_shutdown(monkeypatch, root):
    """Make the process pool of `reproduce(jobs=...)` write `root/POOL_SHUTDOWN` when it is shut down (after the run
    loop ended: a failure has come back, or every seed finished), before it waits for the seeds still running."""
    import concurrent.futures

    class MarkingPool(concurrent.futures.ProcessPoolExecutor):
        def shutdown(self, wait=True, *, cancel_futures=False):
            with open(os.path.join(root, POOL_SHUTDOWN), "w"):
                pass
            super().shutdown(wait=wait, cancel_futures=cancel_futures)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", MarkingPool)


def _wait_for_pool_shutdown(root, seed, limit=300):
    """Block until `reproduce` shuts the pool down; a hang guard raises after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not os.path.exists(os.path.join(root, POOL_SHUTDOWN)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"seed {seed}: reproduce did not shut its pool down within {limit} s")
        time.sleep(0.02)


def seed_run(seed, fast, workdir):
    """Marks the seed's folder and returns the seed, the process id and `fast`."""
    with open(os.path.join(workdir, "ran"), "w") as fh:
        fh.write(str(os.getpid()))
    return {"seed": seed, "pid": os.getpid(), "fast": fast}


def failing_seed_run(seed, fast, workdir):
    """Marks its start (and its failure or finish) in the output folder; seed 0 fails as soon as seed 1 has started
    (both workers busy), the others finish only once `reproduce` shut the pool down (needs [`mark_pool_shutdown`])."""
    root = os.path.dirname(workdir)
    with open(os.path.join(root, f"started{seed}"), "w"):
        pass
    if seed == 0:
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(root, "started1")) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(os.path.join(root, "failed0"), "w"):
            pass
        raise RuntimeError("seed 0 failed")
    _wait_for_pool_shutdown(root, seed)
    with open(os.path.join(root, f"finished{seed}"), "w"):
        pass
    return {"seed": seed}


def fails_on_seed_1(seed, fast, workdir):
    """Seed 1 fails; every other seed finishes only once `reproduce` shut the pool down (needs
    [`mark_pool_shutdown`]), so no seed's success can come back before seed 1's failure."""
    if seed == 1:
        raise RuntimeError("seed 1 crashed")
    _wait_for_pool_shutdown(os.path.dirname(workdir), seed)
    return {"value": 1.0}


def _wait_for_marker(path, what):
    deadline = time.monotonic() + 300
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} never started")
        time.sleep(0.05)


def killed_on_seed_1(seed, fast, workdir):
    """Seed 1's process is killed (as the out-of-memory killer does) while seed 0 is still running.

    The two seeds meet through marker files in their work folders, so the overlap holds however late the pool's
    second worker starts (a fixed sleep did not: on a loaded machine the second spawned worker came up after seed 0
    had finished, and seed 2 was running beside seed 1 instead). Needs [`mark_pool_shutdown`]."""
    import signal

    with open(os.path.join(workdir, "started"), "w"):
        pass
    other = os.path.join(os.path.dirname(workdir), "seed0" if seed == 1 else "seed1", "started")
    if seed == 1:
        _wait_for_marker(other, "seed 0")
        os.kill(os.getpid(), signal.SIGKILL)
    if seed == 0:
        _wait_for_marker(other, "seed 1")
        _wait_for_pool_shutdown(os.path.dirname(workdir), seed)  # still running when seed 1 dies
    return {"value": 1.0}
