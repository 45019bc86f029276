"""The two-rank GRAPE checks of tests/grape/test_distributed.py in one launch (a `torchrun` start costs each rank
the torch / transformers imports, ~10 s): `ddp_grape.py` into `<output_dir>/weights`, then `ddp_grape_resume.py`'s
uninterrupted run and its resume from checkpoint-4 (a new model and trainer) into `<output_dir>/resume`, then
`ddp_grape_scale.py`'s run into `<output_dir>/scale`. A failure's traceback names the script and step (`check`
below) that failed.

Usage: torchrun --nproc_per_node 2 ddp_grape_all.py <output_dir>
"""

import os
import sys

import ddp_grape
import ddp_grape_resume
import ddp_grape_scale

from hf_ext.utils import shutdown_distributed


def check(name, fn, *args):
    print(f"ddp_grape_all: {name}", file=sys.stderr, flush=True)
    fn(*args)


if __name__ == "__main__":
    out = sys.argv[1]
    for sub in ("weights", "resume", "scale"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    check("ddp_grape (identical weights)", ddp_grape.main, os.path.join(out, "weights"))
    check("ddp_grape_resume uninterrupted", ddp_grape_resume.main, os.path.join(out, "resume"), False)
    check("ddp_grape_resume resumed from checkpoint-4", ddp_grape_resume.main, os.path.join(out, "resume"), True)
    check("ddp_grape_scale (2 x 2 sequences)", ddp_grape_scale.main, os.path.join(out, "scale"))
    shutdown_distributed()
