"""2 gloo ranks: `rank_fingerprints` on an FSDP2 (`fully_shard`, DTensor) model equals the unsharded model's.

Usage: fsdp_rank_fingerprints.py OUT_DIR (writes OUT_DIR/fsdp_fingerprints.json on rank 0). `check(OUT_DIR)` does the
same in a launch whose process group is already up (the first check of two_rank_checks.py)."""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from hf_ext.utils.distributed import gather_objects, is_dtensor, rank_fingerprints, shutdown_distributed


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    check(out_dir)
    shutdown_distributed()


def check(out_dir: str) -> None:
    assert dist.is_initialized() and dist.get_world_size() == 2, "expected two ranks"
    torch.manual_seed(0)  # the same weights on both ranks before sharding
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 5))
    before = rank_fingerprints(model)  # plain tensors
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    dtensor = all(is_dtensor(p) for p in model.parameters())
    local = [p.to_local().numel() for p in model.parameters()]  # this rank's shard sizes (differ by rank)
    after = rank_fingerprints(model)
    result = {
        "world_size": dist.get_world_size(),
        "before": before,
        "after": after,
        "dtensor": gather_objects(dtensor),
        "local_numels": gather_objects(local),
    }
    if dist.get_rank() == 0:
        with open(os.path.join(out_dir, "fsdp_fingerprints.json"), "w", encoding="utf-8") as fh:
            json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1])
