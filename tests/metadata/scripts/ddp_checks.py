"""The two-rank checks of tests/metadata/test_recipe_distributed.py in one launch (a `torchrun` start costs each rank
the torch / transformers / peft imports, ~10 s): `ddp_invalid_count.py`, `ddp_iterable_cooldown.py` and
`ddp_scale.py` in one gloo process group, then the metadata_pretrain recipe (its `finish()` tears the group down, so
it runs last). A failure's traceback names the check that failed (also printed to stderr before each check).

Usage: ddp_checks.py OUT_DIR RECIPE_ARGS... (the recipe writes into its own --output_dir; the scripts write
OUT_DIR/ddp_invalid_count.json and OUT_DIR/ddp_iterable_cooldown.json on rank 0, `ddp_scale.py` its runs' files into
OUT_DIR/ddp_scale)."""

import sys

import ddp_invalid_count
import ddp_iterable_cooldown
import ddp_scale

from hf_ext.recipes.metadata_pretrain import main as metadata_pretrain


def check(name, fn, *args):
    print(f"ddp_checks: {name}", file=sys.stderr, flush=True)
    fn(*args)


if __name__ == "__main__":
    out = sys.argv[1]
    check("ddp_invalid_count", ddp_invalid_count.main, out)
    check("ddp_iterable_cooldown", ddp_iterable_cooldown.main, out)
    check("ddp_scale", ddp_scale.main, out)
    check("metadata_pretrain recipe", metadata_pretrain, sys.argv[2:])
