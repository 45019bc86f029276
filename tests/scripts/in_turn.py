"""Several 2-rank checks in one `torchrun` launch: `in_turn` runs each on every rank and marks it on rank 0's stdout
(`[two_rank_checks] start NAME` / `done NAME`), so a test reading the launch names the check a failed launch stopped
in; `deferred_teardown` lets a recipe's `main()` run before other checks of the same launch.
Used by tests/scripts/two_rank_checks.py and tests/optim/scripts/two_rank_checks.py."""

import contextlib
import os

MARK = "[two_rank_checks]"


def in_turn(name, fn, *args):
    """`fn(*args)` on every rank between `MARK start NAME` and `MARK done NAME` (printed by rank 0 once every rank
    finished it). The environment is restored afterwards: accelerate records an FSDP run in it
    (`ACCELERATE_USE_FSDP`), and every later `Accelerator` would then wrap its model in FSDP."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        print(f"{MARK} start {name}", flush=True)
    environ = dict(os.environ)
    result = fn(*args)
    os.environ.clear()
    os.environ.update(environ)
    if dist.is_initialized():  # a recipe's finish() has met the other rank and torn the group down already
        dist.barrier()
    if rank == 0:
        print(f"{MARK} done {name}", flush=True)
    return result


@contextlib.contextmanager
def deferred_teardown():
    """A recipe's `finish()` inside: every rank meets and accelerate's cached state is dropped, as
    `shutdown_distributed` does, but the process group stays up for the next check."""
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    import hf_ext.utils.distributed as distributed

    real = distributed.shutdown_distributed

    def keep_group():
        dist.barrier()
        AcceleratorState._reset_state(reset_partial_state=True)

    distributed.shutdown_distributed = keep_group
    try:
        yield
    finally:
        distributed.shutdown_distributed = real
