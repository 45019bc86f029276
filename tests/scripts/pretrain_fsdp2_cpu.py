"""`hf_ext.recipes.pretrain.main` on 2 gloo ranks with accelerate's FSDP2 plugin honoured on CPU as it is on GPUs
(`_fsdp_on_cpu` of tests/optim/scripts/scale_out_trainer.py). `run(argv)` is the last check of two_rank_checks.py's
launch (tests/test_two_rank_checks.py).

Usage: torchrun --nproc_per_node 2 pretrain_fsdp2_cpu.py <pretrain arguments>
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "optim", "scripts"))
from scale_out_trainer import _fsdp_on_cpu  # noqa: E402

from hf_ext.recipes.pretrain import main  # noqa: E402
from hf_ext.utils import shutdown_distributed  # noqa: E402


def run(argv):
    """The recipe on `argv` with the FSDP2 plugin honoured on CPU; its `finish()` tears the process group down."""
    _fsdp_on_cpu()
    assert main(argv)["world_size"] == 2


if __name__ == "__main__":
    try:
        run(sys.argv[1:])
    finally:
        shutdown_distributed()
