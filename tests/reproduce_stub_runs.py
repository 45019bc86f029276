"""Seed runs for `reproduce(jobs=...)` tests with real worker processes: module-level functions in a module that
imports nothing heavy, so that spawned workers start fast."""

from __future__ import annotations

import os
import time


def seed_run(seed, fast, workdir):
    """Marks the seed's folder and returns the seed, the process id and `fast`."""
    with open(os.path.join(workdir, "ran"), "w") as fh:
        fh.write(str(os.getpid()))
    return {"seed": seed, "pid": os.getpid(), "fast": fast}


def failing_seed_run(seed, fast, workdir):
    """Marks its start (and its failure or finish) in the output folder; seed 0 fails as soon as seed 1 has started
    (both workers busy), the others take 1.5 s."""
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
    time.sleep(1.5)
    with open(os.path.join(root, f"finished{seed}"), "w"):
        pass
    return {"seed": seed}
