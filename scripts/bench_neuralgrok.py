"""Per-step cost of NeuralGrok and of the normalisation-only control against the Adam baseline, measured side by side.

Runs the grokking recipe (`hf_ext.recipes.neuralgrok`, its defaults unless overridden) for `--steps` optimizer steps
per method (baseline `none`, the control `normalize`, NeuralGrok with the reference's recomputed outer gradient
`neuralgrok`, and NeuralGrok with `--outer_gradient next_step`, `neuralgrok_next_step`), round by round with the method order rotated each round, so that machine load hits every method alike.
A step's time includes everything the method adds to it: the gradient transform, the clip and, every `outer_every`
steps, NeuralGrok's outer step; evaluation is switched off. Prints one JSON line per round and a summary line: mean CPU
seconds per step of each method, and the ratio to the baseline of the same round (median, mean and spread over
rounds). CPU time of the process is the figure to compare on a shared machine (wall time is printed too).

Usage: python scripts/bench_neuralgrok.py [--rounds 3] [--steps 80] [--threads 1] [--tiny] [-- recipe args...]

Recipe arguments after `--` go to every runner whose method reads them: a flag only some methods read (the recipe
refuses it for the others, e.g. `--outer_every`, `--amplifier_hidden_dims`, `--meta_learning_rate`: neuralgrok;
`--amplifier_c`, `--amplifier_clip_norm`, `--outer_fraction`: neuralgrok and normalize) is passed to those runners only,
so `-- --outer_every 8 --amplifier_hidden_dims 64 128 64` measures that amplifier against the same baseline. A flag no
runner reads (e.g. `--grokfast_alpha`), and one the script sets itself (`--methods`, `--seeds`, `--max_steps`: use
--steps, `--torch_threads`: use --threads, `--output_dir`, and `--outer_gradient`, which tells the two NeuralGrok runners
apart), is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile


# label -> (recipe method, extra recipe arguments); neuralgrok_next_step takes the outer step's gradient from the
# following real step (`--outer_gradient next_step`) instead of recomputing it (the reference, `neuralgrok`).
def _runners() -> dict[str, tuple[str, list[str]]]:
    from hf_ext.reproduce.methods import NEURALGROK_VARIANTS  # the reproduction's variant runs, reused as they are

    base = {"none": ("none", []), "normalize": ("normalize", []), "neuralgrok": ("neuralgrok", [])}
    return {**base, **{k: v for k, v in NEURALGROK_VARIANTS.items() if v[0] == "neuralgrok"}}


RUNNERS = _runners()
METHODS = tuple(RUNNERS)


# Recipe flags the script sets for every runner (or per runner: --outer_gradient), which `-- recipe args` must not
# override: the figures would no longer be those of the runners they are labelled with.
OWN_FLAGS = {
    "methods": "the runners set it",
    "seeds": "each runner trains seed 0",
    "max_steps": "use --steps",
    "torch_threads": "use --threads",
    "output_dir": "each runner writes into a temporary folder",
    "outer_gradient": "it tells the runners neuralgrok (recompute) and neuralgrok_next_step apart",
}


def _flag_name(token: str) -> str:
    return token[2:].split("=", 1)[0].replace("-", "_")


def split_recipe_args(extra: list[str]) -> list[tuple[str, list[str]]]:
    """`extra` as (flag name, its tokens) groups: a token starting with `--` opens a flag, the tokens up to the next
    one are its values (`--amplifier_hidden_dims 64 128 64`); `--flag=value` is one token."""
    groups: list[tuple[str, list[str]]] = []
    for token in extra:
        if token.startswith("--") and len(token) > 2:
            groups.append((_flag_name(token), [token]))
        elif not groups:
            raise ValueError(f"recipe args after `--` must start with a --flag, got {token!r}.")
        else:
            groups[-1][1].append(token)
    return groups


def recipe_args_by_runner(extra: list[str]) -> dict[str, list[str]]:
    """The recipe arguments each runner gets: `extra`'s flags that its method reads (`flag_readers`); raises
    ValueError for a flag the script sets itself or that no runner reads."""
    from hf_ext.recipes.neuralgrok import flag_readers

    groups = split_recipe_args(extra)
    for name, _ in groups:
        if name in OWN_FLAGS:
            raise ValueError(f"--{name} after `--` is set by this script ({OWN_FLAGS[name]}); drop it.")
    methods = {method for method, _ in RUNNERS.values()}
    unread = [name for name, _ in groups if flag_readers(name) is not None and not set(flag_readers(name)) & methods]
    if unread:
        raise ValueError(
            f"{', '.join('--' + n for n in unread)} after `--`: read by no runner of this script (its methods: "
            f"{', '.join(sorted(methods))}); drop {'it' if len(unread) == 1 else 'them'}."
        )
    out = {}
    for label, (method, _) in RUNNERS.items():
        out[label] = [
            token
            for name, tokens in groups
            if flag_readers(name) is None or method in flag_readers(name)
            for token in tokens
        ]
    return out


def measure(label: str, steps: int, threads: int, extra: list[str], output_dir: str) -> dict:
    """CPU and wall seconds per step of the runner `label`; `extra`: the recipe arguments for this runner (as
    `recipe_args_by_runner` filters them)."""
    from hf_ext.recipes.neuralgrok import main

    method, method_args = RUNNERS[label]
    argv = [
        "--methods", method,
        "--seeds", "0",
        "--max_steps", str(steps),
        "--eval_strategy", "no",
        "--logging_steps", str(max(steps // 4, 1)),
        "--save_strategy", "no",
        "--report_to", "none",
        "--disable_tqdm", "true",
        "--torch_threads", str(threads),
        "--output_dir", output_dir,
        *method_args,
        *extra,
    ]  # fmt: skip
    record = main(argv, plots=False)["methods"][method]  # its folder is temporary: drawing the PNGs would be waste
    return {"cpu": record["cpu_seconds_per_step_mean"], "wall": record["seconds_per_step_mean"]}


def summarize(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 4),
        "mean": round(statistics.fmean(values), 4),
        "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="Rounds; each runs every method once.")
    parser.add_argument("--steps", type=int, default=80, help="Optimizer steps per run (a multiple of outer_every).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--tiny", action="store_true", help="A seconds-long check of the script (width 32, 8 steps).")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds={args.rounds} must be >= 1.")
    if args.steps < 4:
        parser.error(f"--steps={args.steps} must be >= 4 so that the run contains an outer step.")
    if args.threads < 1:  # was refused by the recipe as `--torch_threads`, a flag this script's user never gave
        parser.error(f"--threads={args.threads} must be >= 1.")
    try:
        split_recipe_args(extra)  # the caller's own: a leading value must not join the flags --tiny puts before them
        if args.tiny:
            args.rounds, args.steps = min(args.rounds, 2), 8
            extra = ["--hidden_size", "32", "--per_device_train_batch_size", "64", *extra]
        per_runner = recipe_args_by_runner(extra)
    except ValueError as err:
        parser.error(str(err))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
            times = {
                m: measure(m, args.steps, args.threads, per_runner[m], os.path.join(tmp, f"{r}-{m}")) for m in order
            }
            row = {
                "round": r,
                "order": list(order),
                **{f"{m}_cpu_s_per_step": round(times[m]["cpu"], 5) for m in METHODS},
                **{f"{m}_wall_s_per_step": round(times[m]["wall"], 5) for m in METHODS},
                **{f"{m}_cpu_ratio": round(times[m]["cpu"] / times["none"]["cpu"], 4) for m in METHODS[1:]},
            }
            rounds.append(row)
            print(json.dumps(row), flush=True)
    summary = {
        "rounds": args.rounds,
        "steps": args.steps,
        "threads": args.threads,
        "recipe_args": extra,
        "recipe_args_by_runner": per_runner,
        **{f"{m}_cpu_ratio": summarize([row[f"{m}_cpu_ratio"] for row in rounds]) for m in METHODS[1:]},
        **{f"{m}_cpu_s_per_step": summarize([row[f"{m}_cpu_s_per_step"] for row in rounds]) for m in METHODS},
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
