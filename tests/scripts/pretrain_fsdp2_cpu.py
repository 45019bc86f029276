"""`hf_ext.recipes.pretrain.main` on 2 gloo ranks with accelerate's FSDP2 plugin honoured on CPU as it is on GPUs
(`_fsdp_on_cpu` of tests/optim/scripts/scale_out_trainer.py). Launched by tests/test_pretrain.py.

Usage: torchrun --nproc_per_node 2 pretrain_fsdp2_cpu.py [--rank_fingerprints_check OUT_DIR] <pretrain arguments>

With --rank_fingerprints_check, the same launch first runs fsdp_rank_fingerprints.py's check (`rank_fingerprints` of a
`fully_shard` model equals the unsharded one's; OUT_DIR/fsdp_fingerprints.json): one 2-rank launch for both.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "optim", "scripts"))
from scale_out_trainer import _fsdp_on_cpu  # noqa: E402

from hf_ext.recipes.pretrain import main  # noqa: E402
from hf_ext.utils import shutdown_distributed  # noqa: E402

if __name__ == "__main__":
    argv, fingerprints_dir = sys.argv[1:], None
    if argv[:1] == ["--rank_fingerprints_check"]:
        fingerprints_dir, argv = argv[1], argv[2:]
    _fsdp_on_cpu()
    try:
        if fingerprints_dir is not None:  # first: the recipe shuts the process group down when it finishes
            import torch.distributed as dist
            from fsdp_rank_fingerprints import check  # this script's folder is first on sys.path

            dist.init_process_group("gloo")  # the recipe's accelerate state then uses it (its backend on CPU too)
            check(fingerprints_dir)
        assert main(argv)["world_size"] == 2
    finally:
        shutdown_distributed()
