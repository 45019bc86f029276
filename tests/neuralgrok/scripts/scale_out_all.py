"""2 gloo ranks on CPU, one launch: the checks of scale_out_neuralgrok.py (gradient transforms and the outer step
under FSDP2 / DDP vs one process), then those of fsdp2_grokfast_resume.py (Grokfast under FSDP2 through the Trainer
checkpoints and resumes exactly), in turn in one process group (a launch costs more than either check).

Usage: scale_out_all.py OUT_DIR (writes OUT_DIR/scale_out_neuralgrok.json, then OUT_DIR/fsdp2_grokfast_resume.json,
on rank 0; a failure's traceback names the script whose check raised)."""

import datetime
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fsdp2_grokfast_resume  # noqa: E402
import scale_out_neuralgrok  # noqa: E402
from fsdp2_grokfast_resume import _fsdp_on_cpu  # noqa: E402

from hf_ext.utils.distributed import shutdown_distributed  # noqa: E402


def main(out_dir):
    _fsdp_on_cpu()  # changes only Trainers given an FSDP plugin (the second script's)
    # a collective one rank never reaches fails after 2 minutes instead of gloo's 30
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    scale_out_neuralgrok.run(out_dir)
    dist.barrier()
    fsdp2_grokfast_resume.run(out_dir)
    shutdown_distributed()  # all ranks shut down together


if __name__ == "__main__":
    main(sys.argv[1])
