"""The FOG checks on 2 gloo ranks in one launch (a `torchrun` start costs each rank the torch / transformers imports,
~10 s): the named scripts of this folder (tp_fog, scale_out) in turn, in one process group,
each into OUT_DIR/<check>. Every rank prints `two_rank_checks: <check>` to stdout and stderr as a check starts (a failure's
traceback follows the name of its check) and writes OUT_DIR/<check>/passed.rank<r> once the check passed on it.
The fixture `fog_two_ranks` of tests/fog/conftest.py launches it; each script still runs on its own too.

Usage: python -m torch.distributed.run --nproc_per_node 2 two_rank_checks.py OUT_DIR CHECK [CHECK ...]"""

import importlib
import os
import sys

import torch.distributed as dist

from hf_ext.utils.distributed import shutdown_distributed


def main(out_dir: str, checks: list[str]) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name in checks:
        for stream in (sys.stdout, sys.stderr):
            print(f"two_rank_checks: {name}", file=stream, flush=True)
        folder = os.path.join(out_dir, name)
        os.makedirs(folder, exist_ok=True)
        importlib.import_module(name).main(folder)
        open(os.path.join(folder, f"passed.rank{rank}"), "w").close()
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
