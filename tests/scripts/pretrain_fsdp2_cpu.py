"""`hf_ext.recipes.pretrain.main` on 2 gloo ranks with accelerate's FSDP2 plugin honoured on CPU as it is on GPUs
(`_fsdp_on_cpu` of tests/optim/scripts/scale_out_trainer.py). Launched by tests/test_pretrain.py.

Usage: torchrun --nproc_per_node 2 pretrain_fsdp2_cpu.py <pretrain arguments>
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "optim", "scripts"))
from scale_out_trainer import _fsdp_on_cpu  # noqa: E402

from hf_ext.recipes.pretrain import main  # noqa: E402
from hf_ext.utils import shutdown_distributed  # noqa: E402

if __name__ == "__main__":
    _fsdp_on_cpu()
    try:
        assert main(sys.argv[1:])["world_size"] == 2
    finally:
        shutdown_distributed()
