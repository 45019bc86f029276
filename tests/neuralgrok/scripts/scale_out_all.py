"""Every 2-rank NeuralGrok check of tests/neuralgrok/test_scale_out.py in ONE launch (a `torchrun` start costs each
rank the torch / transformers / peft imports, ~10 s, more than most checks), in turn in one gloo process group:

1. `scale_out`: scale_out_neuralgrok.py's checks (gradient transforms and the outer step under FSDP2 / DDP vs one
   process), writing OUT_DIR/scale_out_neuralgrok.json;
2. `fsdp2_grokfast_resume`: fsdp2_grokfast_resume.py's (Grokfast under FSDP2 through the Trainer checkpoints and
   resumes exactly), writing OUT_DIR/fsdp2_grokfast_resume.json and OUT_DIR/<mode>/run/...;
3. `amplifier_broadcast`: ddp_amplifier_broadcast.py's (rank 0's amplifier is the one trained), into
   OUT_DIR/broadcast;
4. `ddp_neuralgrok next_step`: ddp_neuralgrok.py's check with the next_step outer gradient, into
   OUT_DIR/trainer/next_step;
5. the recipe runs listed in OUT_DIR/recipe_runs.json, if that file exists (`{name: recipe argv}`, written by the
   test): `hf_ext.recipes.neuralgrok.main(argv)` on both ranks, everything each rank writes to stdout going to
   OUT_DIR/<name>.stdout_rank<rank>.txt (the test counts what the ranks printed); their `finish()` meets the other
   rank but leaves the process group up for the checks after them;
6. `ddp_neuralgrok recompute`: ddp_neuralgrok.py's check with the recompute outer gradient, into
   OUT_DIR/trainer/recompute. It ends with the neuralgrok recipe, whose `finish()` tears the process group down: it
   runs last.

Each rank prints `scale_out_all: <check>` to stderr before a check starts, so a failed launch names the check that
failed (its traceback names the script), and writes OUT_DIR/passed/<check>.rank<rank> once the check passed on it. The FSDP patch of `_fsdp_on_cpu` changes only Trainers given an FSDP plugin
(check 2's), and the environment variables check 2's Trainers set are undone after it.

Usage: scale_out_all.py OUT_DIR"""

import contextlib
import datetime
import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddp_amplifier_broadcast  # noqa: E402
import ddp_neuralgrok  # noqa: E402
import fsdp2_grokfast_resume  # noqa: E402
import scale_out_neuralgrok  # noqa: E402
from fsdp2_grokfast_resume import _fsdp_on_cpu  # noqa: E402

import hf_ext.utils.distributed as distributed  # noqa: E402

PASSED = None  # OUT_DIR/passed, set by main


def check(name, fn, *args):
    """Run check `name`; this rank writes OUT_DIR/passed/<name>.rank<rank> once it passed (see `main`)."""
    print(f"scale_out_all: {name}", file=sys.stderr, flush=True)
    fn(*args)
    os.makedirs(PASSED, exist_ok=True)
    # the rank from the launcher: the last check's recipe has torn the process group down
    open(os.path.join(PASSED, f"{name}.rank{os.environ['RANK']}"), "w").close()


@contextlib.contextmanager
def stdout_to(path):
    """Everything this process writes to its stdout (file descriptor 1: Python, C code, children) goes to `path`."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "w") as file:
        os.dup2(file.fileno(), 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def environment_kept():
    """`os.environ` afterwards as before: accelerate marks the process as FSDP (`ACCELERATE_USE_FSDP=true`) when a
    Trainer is given an FSDP plugin, which would put every later Trainer under FSDP (NeuralGrok refuses it); the checks
    after check 2 start from the environment of a launch of their own."""
    before = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


@contextlib.contextmanager
def process_group_kept():
    """A recipe's `finish()` (which imports `shutdown_distributed` when it runs) only waits for the other rank."""
    shutdown = distributed.shutdown_distributed
    distributed.shutdown_distributed = dist.barrier
    try:
        yield
    finally:
        distributed.shutdown_distributed = shutdown


def recipe_run(out_dir, name, argv):
    from hf_ext.recipes.neuralgrok import main

    with process_group_kept(), stdout_to(os.path.join(out_dir, f"{name}.stdout_rank{dist.get_rank()}.txt")):
        main(argv)
    assert dist.is_initialized(), f"recipe run {name} tore the process group down"


def main(out_dir):
    global PASSED
    PASSED = os.path.join(out_dir, "passed")
    _fsdp_on_cpu()  # changes only Trainers given an FSDP plugin (check 2's)
    # a collective one rank never reaches fails after 2 minutes instead of gloo's 30
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    check("scale_out", scale_out_neuralgrok.run, out_dir)
    dist.barrier()
    with environment_kept():
        check("fsdp2_grokfast_resume", fsdp2_grokfast_resume.run, out_dir)
    check("amplifier_broadcast", ddp_amplifier_broadcast.check, os.path.join(out_dir, "broadcast"))
    trainer = os.path.join(out_dir, "trainer")
    check("ddp_neuralgrok next_step", ddp_neuralgrok.check, os.path.join(trainer, "next_step"), "next_step")
    runs = os.path.join(out_dir, "recipe_runs.json")
    if os.path.exists(runs):
        with open(runs) as file:
            for name, argv in json.load(file).items():
                check(f"recipe_run {name}", recipe_run, out_dir, name, argv)
    # last: its recipe tears the process group down
    check("ddp_neuralgrok recompute", ddp_neuralgrok.check, os.path.join(trainer, "recompute"), "recompute")
    distributed.shutdown_distributed()  # a no-op after the recipe's; all ranks shut down together


if __name__ == "__main__":
    main(sys.argv[1])
