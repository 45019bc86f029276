"""The layer-parallel checks on 2 gloo ranks in one launch (a `torchrun` start costs each rank the torch / transformers /
peft imports, ~10 s): the named scripts of this folder (tp_layer_parallel, fsdp2_split_load) in turn, in one process
group, each into OUT_DIR/<check>, and last, as the check `recipe`, the layer_parallel recipe with RECIPE_ARGS and
`--output_dir OUT_DIR/recipe` (its `finish()` tears the group down, so it can only run last). Every rank prints
`two_rank_checks: <check>` to stdout and stderr as a check starts (a failure's traceback follows the name of its check)
and writes OUT_DIR/<check>/passed.rank<r> once the check passed on it. The fixture `lp_two_ranks` of tests/layer_parallel/conftest.py launches it; each script still runs on its own too.

Usage:
    python -m torch.distributed.run --nproc_per_node 2 two_rank_checks.py OUT_DIR CHECK [CHECK ...] [-- RECIPE_ARGS]"""

import importlib
import os
import sys

import torch.distributed as dist

from hf_ext.utils.distributed import shutdown_distributed


def main(out_dir: str, checks: list[str], recipe_args: list[str]) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name in checks:
        for stream in (sys.stdout, sys.stderr):
            print(f"two_rank_checks: {name}", file=stream, flush=True)
        folder = os.path.join(out_dir, name)
        if name == "recipe":
            if name != checks[-1]:
                raise ValueError(f"the recipe check tears the process group down: name it last, not in {checks}")
            from hf_ext.recipes.layer_parallel import main as layer_parallel_recipe

            layer_parallel_recipe([*recipe_args, "--output_dir", folder])
        else:
            os.makedirs(folder, exist_ok=True)
            importlib.import_module(name).main(folder)
        open(os.path.join(folder, f"passed.rank{rank}"), "w").close()
    shutdown_distributed()  # (a no-op after the recipe's own)


if __name__ == "__main__":
    args = sys.argv[2:]
    split = args.index("--") if "--" in args else len(args)
    main(sys.argv[1], args[:split], args[split + 1 :])
