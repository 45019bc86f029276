"""The 2-rank checks of tests/optim/test_two_rank_checks.py in ONE `torchrun --nproc_per_node 2` launch (each launch
costs every rank ~15 s of imports before its work), in turn and marked on stdout (`in_turn` of
tests/scripts/in_turn.py, so a failed launch names the check it stopped in):

1. scale_out_optim.py's: the normalized optimizers under FSDP2 and DDP (OUT_DIR/scale_out_optim.json);
2. scale_out_trainer.py's: the optimizers through `Trainer` with accelerate's FSDP2 plugin (scale_out_trainer.json);
3. the warmup recipe's `main()` with the arguments after OUT_DIR: data-parallel, its finish() tears the process group
   down, so it runs last (accelerate's state left by 2 is dropped first, as in a launch of its own).

Usage: torchrun --nproc_per_node 2 two_rank_checks.py OUT_DIR <warmup recipe arguments>
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(os.path.dirname(HERE)), "scripts")]

import scale_out_optim  # noqa: E402
import scale_out_trainer  # noqa: E402
import torch.distributed as dist  # noqa: E402
from in_turn import in_turn  # noqa: E402 (tests/scripts/in_turn.py)

from hf_ext.recipes.warmup import main as warmup  # noqa: E402


def main(out_dir, warmup_argv):
    from accelerate.state import AcceleratorState

    scale_out_trainer._fsdp_on_cpu()  # only Trainers given an FSDP plugin see it
    dist.init_process_group("gloo")
    in_turn("scale_out_optim", scale_out_optim.check, out_dir)
    in_turn("scale_out_trainer", scale_out_trainer.check, out_dir)
    AcceleratorState._reset_state(reset_partial_state=True)  # 2's FSDP type stays out of the recipe's state
    in_turn("warmup", warmup, warmup_argv)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
