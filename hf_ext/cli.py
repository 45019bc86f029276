"""`hf-ext` command line: list recipes and run them.

Exit codes: 0 success; 2 a usage error (unknown command, recipe, method or flag; for `hf-ext reproduce`, a bad
value); for `hf-ext reproduce`, 1 when an asserted claim does not hold, 3 when the method asserts no claim ("reported
only") and 4 when the run failed (an exception, printed, then which report files `--output_dir` holds: none when it
failed before a verdict). `hf-ext run <recipe>` with a bad flag value exits 1 with the recipe's `ValueError`, which
names the flag.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from . import __version__
    from .recipes import available_recipes, run_recipe
    from .reproduce import MAX_SEEDS

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="hf-ext", description="HuggingFace-native tools for ten EPFL research systems."
    )
    parser.add_argument("--version", action="version", version=f"hf_ext {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", help="list the recipes with one line each")
    run = sub.add_parser("run", help="run a recipe: hf-ext run <recipe> [recipe args...]", add_help=False)
    run.add_argument("recipe", nargs="?")
    sub.add_parser("env", help="print versions and devices for a bug report")
    rep = sub.add_parser(
        "reproduce", help="run a method's reproduction and print the paper's claim, our number and the verdict"
    )
    rep.add_argument("method", nargs="?", help="method name (see --list)")
    rep.add_argument(
        "--seeds", type=int, default=None, help=f"number of seeds, at most {MAX_SEEDS} (default: the method's, >= 3)"
    )
    rep.add_argument(
        "--first_seed", type=int, default=None,
        help="run seeds K .. K+N-1 instead of 0 .. N-1 (fresh seeds beside the published ones; default 0)",
    )  # fmt: skip
    rep.add_argument("--jobs", type=int, default=1, help="seeds run at the same time, one process each (default 1)")
    rep.add_argument("--fast", action="store_true", help="smaller budget: a smoke check that it runs, not evidence")
    rep.add_argument("--output_dir", default=None, help="keep the runs and write reproduction.json/.md here")
    rep.add_argument("--list", action="store_true", help="list the methods")
    if not argv:
        parser.print_help()
        return 0
    if argv[0] == "run":
        if len(argv) >= 2 and argv[1] in ("-h", "--help"):  # was a usage error (exit 2): needs a recipe name first
            _print_run_help(available_recipes())
            return 0
        if len(argv) < 2 or argv[1].startswith("-"):
            names = ", ".join(sorted(available_recipes()))
            parser.error(f"`hf-ext run` needs a recipe name first; one of: {names}")
        try:
            run_recipe(argv[1], argv[2:])
        except ValueError as err:
            if argv[1] not in available_recipes():
                parser.error(str(err))
            unused = _unused_arguments(err)
            if unused is not None:  # a mistyped or unknown flag is a usage error (exit 2), not a crash (exit 1)
                flags = [a for a in unused if a.startswith("-")] or unused
                parser.error(
                    f"unrecognized argument(s) for `hf-ext run {argv[1]}`: {' '.join(flags)} "
                    f"(see `hf-ext run {argv[1]} --help`)"
                )
            raise
        return 0
    args = parser.parse_args(argv)
    if args.command == "env":
        from .env import collect, format_env

        print(format_env(collect()))
        return 0
    if args.command == "reproduce":
        return _reproduce(parser, args)
    if args.command == "list":
        recipes = available_recipes()
        width = max(len(n) for n in recipes)
        for name, desc in recipes.items():
            print(f"{name.ljust(width)}  {desc}")
    return 0


def _print_run_help(recipes: dict[str, str]) -> None:
    """`hf-ext run --help`: the usage and the recipes, one line each."""
    width = max(len(n) for n in recipes)
    lines = [
        "usage: hf-ext run <recipe> [recipe args...]",
        "",
        "Run a recipe with its own flags; `hf-ext run <recipe> --help` lists them.",
        "",
        "recipes:",
        *(f"  {name.ljust(width)}  {desc}" for name, desc in recipes.items()),
    ]
    print("\n".join(lines))


#: how transformers' `HfArgumentParser.parse_args_into_dataclasses` reports arguments no dataclass field takes
_UNUSED_PREFIX = "Some specified arguments are not used by the HfArgumentParser: "


def _unused_arguments(err: ValueError) -> list[str] | None:
    """The arguments a recipe's `HfArgumentParser` did not recognise, or `None` if `err` is another error."""
    import ast

    text = str(err)
    if not text.startswith(_UNUSED_PREFIX):
        return None
    try:
        unused = ast.literal_eval(text[len(_UNUSED_PREFIX) :])
    except (ValueError, SyntaxError):
        return [text[len(_UNUSED_PREFIX) :]]
    return [str(a) for a in unused] if isinstance(unused, list | tuple) else [str(unused)]


def _reproduce(parser: argparse.ArgumentParser, args) -> int:
    from .reproduce import available_methods, reproduce

    methods = available_methods()
    run_options = [
        flag
        for flag, given in (
            ("--seeds", args.seeds is not None), ("--first_seed", args.first_seed is not None),
            ("--jobs", args.jobs != 1), ("--fast", args.fast),
            ("--output_dir", args.output_dir is not None),
        )
        if given
    ]  # fmt: skip
    if args.list and (args.method or run_options):  # the list would be printed and the run silently skipped (exit 0)
        given = ([repr(args.method)] if args.method else []) + run_options
        parser.error(
            f"--list prints the methods and runs nothing, but {', '.join(given)} {'was' if len(given) == 1 else 'were'} "
            "given too: drop --list to run the reproduction, or give --list alone"
        )
    if not args.method and not args.list and run_options:
        # a forgotten method name must not read as a successful run (exit 0, no report)
        parser.error(
            f"{', '.join(run_options)} given without a method: name one, e.g. `hf-ext reproduce grape ...` "
            "(`hf-ext reproduce --list` lists them)"
        )
    if args.list or not args.method:
        width = max(len(n) for n in methods)
        for name, title in methods.items():
            print(f"{name.ljust(width)}  {title}")
        return 0
    if args.method not in methods:
        parser.error(f"unknown method {args.method!r}; one of: {', '.join(methods)}")
    from .reproduce import MAX_SEEDS

    # checked before any seed list is built (--seeds 4294967296 built a list of 2**32 seeds, tens of GB, then failed
    # with a bare MemoryError, exit 4); the seeds themselves lie in [0, 2**32), see --first_seed below
    if args.seeds is not None and not 1 <= args.seeds <= MAX_SEEDS:
        parser.error(
            f"--seeds must be in [1, {MAX_SEEDS}] (each seed is a whole training run with its own folder; to run "
            f"more, split them over several runs with --first_seed), got {args.seeds}"
        )
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    from .reproduce.methods import REPRODUCTIONS

    spec = REPRODUCTIONS[args.method]
    count = spec.default_seeds if args.seeds is None else args.seeds
    try:  # too few seeds for a verdict is a usage error (exit 2), not a failed claim (exit 1)
        spec.check_seed_count(count, args.fast)
    except ValueError as err:
        parser.error(str(err))
    seeds = args.seeds
    if args.first_seed is not None:
        if not 0 <= args.first_seed <= 2**32 - count:  # every seed K .. K+N-1 must lie in [0, 2**32)
            parser.error(
                f"--first_seed must be in [0, 2**32 - N] for N = {count} seeds (seeds K .. K+N-1 lie in [0, 2**32)), "
                f"got {args.first_seed}"
            )
        seeds = list(range(args.first_seed, args.first_seed + count))
    if args.output_dir is not None:  # "" is refused (it used to mean a temporary folder, deleted afterwards)
        from .utils.io import ensure_writable_dir

        try:
            ensure_writable_dir(args.output_dir, "--output_dir")
        except ValueError as err:
            parser.error(str(err))
    try:
        report = reproduce(
            args.method, seeds=seeds, fast=args.fast, output_dir=args.output_dir, jobs=args.jobs, progress=_progress_line
        )
    except Exception:  # noqa: BLE001 (a crash must not read as a verdict: exit 1 means "a claim does not hold")
        import traceback

        traceback.print_exc()
        print(f"hf-ext reproduce {args.method}: {_failed_run_files(args.output_dir)}", file=sys.stderr)
        return 4
    print(report.to_markdown())
    return report.exit_code  # 0 holds, 1 does not hold, 3 reported only (no asserted claim); 2 is a usage error


def _progress_line(text: str) -> None:
    """`hf-ext reproduce`'s progress (a seed started, finished or failed): one whole line on stderr, flushed at once,
    so that it shows while the seeds run (each takes minutes to an hour) and stays off the report on stdout."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _failed_run_files(output_dir: str | None) -> str:
    """What a failed `hf-ext reproduce` left: no report, or which report files exist in `output_dir` (the `.json` is
    written before the `.md`, so a failed `.md` write leaves a complete `reproduction.json` with the verdict)."""
    from .reproduce import REPORT_FILES, report_files

    present = report_files(output_dir)
    if not present:
        return "the run failed before a verdict (exit 4); no report was written."
    missing = [name for name in REPORT_FILES if name not in present]
    text = f"the run failed (exit 4); {output_dir} holds {' and '.join(present)}"
    if missing:
        text += f", not {' and '.join(missing)}"
    if "reproduction.json" in present and missing:
        text += " (hf_ext.reproduce.rejudge(output_dir) writes it from the per-seed results in reproduction.json)"
    return text + "."


if __name__ == "__main__":
    sys.exit(main())
