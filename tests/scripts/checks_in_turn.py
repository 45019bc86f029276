"""A folder's 2-rank checks in one launch (a `torchrun` start costs each rank the torch / transformers / torchao imports,
~10 s): the named scripts of SCRIPTS_DIR in turn, each script's `main(folder)` in one gloo process group, into
OUT_DIR/<check>. The check named `recipe` instead runs `RECIPE_MODULE.main([*RECIPE_ARGS, "--output_dir",
OUT_DIR/recipe])`; a recipe's `finish()` tears the group down, so it can only be the last check. Every rank prints
`two_rank_checks: <check>` to stdout and stderr as a check starts (a failure's traceback follows the name of its check)
and writes OUT_DIR/<check>/passed.rank<r> once the check passed on it. The fixture `checks_in_turn_launch`
(tests/conftest.py) launches it, for `fp8_two_ranks`, `fog_two_ranks` and `lp_two_ranks` (the conftest.py of
tests/fp8, tests/fog, tests/layer_parallel); each script still runs on its own too.

Usage: python -m torch.distributed.run --nproc_per_node 2 checks_in_turn.py SCRIPTS_DIR OUT_DIR CHECK [CHECK ...]
           [-- RECIPE_MODULE RECIPE_ARGS]"""

import importlib
import os
import sys

import torch.distributed as dist

from hf_ext.utils.distributed import shutdown_distributed


def main(scripts_dir: str, out_dir: str, checks: list[str], recipe: list[str]) -> None:
    if "recipe" in checks and (checks[-1] != "recipe" or not recipe):
        raise ValueError(
            f"the recipe check tears the process group down: name it last, with `-- RECIPE_MODULE ...`: {checks}"
        )
    sys.path.insert(0, scripts_dir)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name in checks:
        for stream in (sys.stdout, sys.stderr):
            print(f"two_rank_checks: {name}", file=stream, flush=True)
        folder = os.path.join(out_dir, name)
        if name == "recipe":
            importlib.import_module(recipe[0]).main([*recipe[1:], "--output_dir", folder])
        else:
            os.makedirs(folder, exist_ok=True)
            importlib.import_module(name).main(folder)
        open(os.path.join(folder, f"passed.rank{rank}"), "w").close()
    shutdown_distributed()  # (a no-op after a recipe's own)


if __name__ == "__main__":
    args = sys.argv[3:]
    split = args.index("--") if "--" in args else len(args)
    main(sys.argv[1], sys.argv[2], args[:split], args[split + 1 :])
