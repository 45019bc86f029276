"""Clean shutdown of a multi-process run.

A process that leaves `torch.distributed` initialised when the interpreter exits tears the gloo/NCCL process group
down from a C++ destructor while the store's threads may still be talking to a peer that already exited; on a
loaded machine that aborts the process ("terminate called without an active exception", SIGABRT) after all work
succeeded. Every multi-process entry point ends with `shutdown_distributed()`, so no work happens at exit.
"""

from __future__ import annotations

import contextlib
import functools


def world_size() -> int:
    """Number of processes in the default group (1 when `torch.distributed` is not initialised)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def launched_processes() -> int:
    """How many processes this run was launched on: `torchrun` / `accelerate launch --num_processes N` (or MPI) set
    the world size in the environment before any process group exists; an initialised group counts too."""
    import torch.distributed as dist
    from accelerate.utils import get_int_from_env

    n = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    if dist.is_available() and dist.is_initialized():
        n = max(n, dist.get_world_size())
    return n


def is_main_process() -> bool:
    """True on global rank 0, and in a single process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """`obj` from rank `src` on every rank (picklable objects; returned as is in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@functools.cache
def _dtensor_class():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        return None
    return DTensor


def is_dtensor(t) -> bool:
    """True for a DTensor: a parameter, gradient or state sharded by FSDP2's `fully_shard` or tensor parallelism."""
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def gather_objects(obj) -> list:
    """`obj` of every rank, in rank order, on every rank (picklable objects; `[obj]` in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def shutdown_distributed() -> None:
    """Wait for every rank, then destroy the default process group. A no-op in a single process; safe to repeat."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # accelerate caches the distributed state; drop it so nothing refers to the destroyed group.
    with contextlib.suppress(Exception):
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()


def rank_fingerprints(model) -> list[list[float]]:
    """Per-rank fingerprint of `model`'s parameters (float64 sum and sum of squares), gathered from every rank.

    Data-parallel ranks must end a run with identical weights; equal fingerprints on all ranks are a cheap check
    that a run really synchronised. In a single process the list has one entry.

    A DTensor parameter (FSDP2's `fully_shard`, tensor parallelism) is fingerprinted as its full tensor
    (`full_tensor()`, a collective: every rank must call this function, as for the gather below), so every rank
    fingerprints the same whole model and the result equals the unsharded model's fingerprint; a rank's local shard
    alone would differ from rank to rank by design.
    """
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        total = torch.zeros(2, dtype=torch.float64)
        for p in model.parameters():
            t = p.detach()
            if is_dtensor(t):
                t = t.full_tensor()  # a plain tensor: the whole parameter, the same on every rank of its mesh
            d = t.to("cpu", torch.float64)
            total[0] += d.sum()
            total[1] += (d * d).sum()
    if not (dist.is_available() and dist.is_initialized()):
        return [total.tolist()]
    device = next(model.parameters()).device
    if dist.get_backend() == "nccl":
        total = total.to(device)
    gathered = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, total)
    return [g.cpu().tolist() for g in gathered]
