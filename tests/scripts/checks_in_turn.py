"""A folder's 2-rank checks in one launch (a `torchrun` start costs each rank the torch / transformers / torchao imports,
~10 s): the named scripts of SCRIPTS_DIR in turn, each script's `main(folder)` in one gloo process group, into
OUT_DIR/<check>. Every rank prints `two_rank_checks: <check>` to stdout and stderr as a check starts (a failure's
traceback follows the name of its check) and writes OUT_DIR/<check>/passed.rank<r> once the check passed on it. The
fixture `checks_in_turn_launch` (tests/conftest.py) launches it, for `fp8_two_ranks` and `fog_two_ranks`
(tests/fp8/conftest.py, tests/fog/conftest.py); each script still runs on its own too.

Usage: python -m torch.distributed.run --nproc_per_node 2 checks_in_turn.py SCRIPTS_DIR OUT_DIR CHECK [CHECK ...]"""

import importlib
import os
import sys

import torch.distributed as dist

from hf_ext.utils.distributed import shutdown_distributed


def main(scripts_dir: str, out_dir: str, checks: list[str]) -> None:
    sys.path.insert(0, scripts_dir)
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
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
