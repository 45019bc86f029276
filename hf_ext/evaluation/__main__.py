"""`python -m hf_ext.evaluation <lm-eval arguments>`: lm-eval's own CLI with hf_ext's Auto classes registered and the
packaged tasks on the include path, so `--model hf --model_args pretrained=<folder>` loads hf_ext models without
`trust_remote_code`. `python -m hf_ext.evaluation task_dir` prints the packaged task folder. An `--include_path` of
the user's, on the command line or in a `--config` YAML, is used as given."""

from __future__ import annotations

import math
import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    import hf_ext  # noqa: F401  (registers the model types with the Auto classes)

    from .harness import task_dir

    if argv == ["task_dir"]:
        print(task_dir())
        return
    is_run = bool(argv) and argv[0] not in ("ls", "validate", "-h", "--help")
    # a run's flags as lm-eval's own parser reads them: `--num_few 40`, `-f40`, `--lim 0`, `--include dir` too;
    # `ls` / `validate` with theirs (an abbreviated `--include dir` is the user's folder there as well)
    parsed = _parsed_run(argv) if is_run else _parsed_run(argv, argv[0]) if argv[:1] in (["ls"], ["validate"]) else None
    # `run` (or lm-eval's legacy form without a subcommand), `ls` and `validate` all take --include_path; only the
    # bare help screens (no arguments, -h, a lone `run`) must stay as lm-eval prints them.
    if (
        argv
        and argv[0] not in ("-h", "--help")
        and argv != ["run"]
        and not any(a == "--include_path" or a.startswith("--include_path=") for a in argv)
        and getattr(parsed, "include_path", None) is None
        and not _config_sets_include_path(argv, getattr(parsed, "config", None))
    ):
        argv += ["--include_path", task_dir()]
    if is_run:
        problem = _run_flag_problem(argv, parsed)
        if problem is not None:  # lm-eval ran --num_fewshot -1 (as n-shot -1), failed on 40 after the model load
            print(f"python -m hf_ext.evaluation: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as err:  # pragma: no cover
        raise SystemExit("lm-eval is not installed: `pip install 'hf_ext[eval]'`.") from err
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


class _RunArgsNotParsed(Exception):
    """lm-eval's `run` parser refused the arguments or would print its help: lm-eval's own parser reports that."""


def _parsed_run(argv: list[str], command: str = "run"):
    """`argv` of a run (`run ...`, or lm-eval's legacy form without a subcommand) as lm-eval's own `run` parser reads
    it: with argparse's unambiguous abbreviations (`--num_few 40`, `--lim 0`, `--include dir`) and joined short
    options (`-f40`, `-L0`), which a scan for the full flag names missed. `command="ls"` / `"validate"`: `argv` of that
    subcommand, read by its parser. `None` when the parser refuses the arguments or is asked for help (lm-eval's parser
    then reports or prints it) or when this lm-eval has no such parser."""
    import argparse

    try:
        if command == "ls":
            from lm_eval._cli.ls import List as Command
        elif command == "validate":
            from lm_eval._cli.validate import Validate as Command
        else:
            from lm_eval._cli.run import Run as Command
    except ImportError:  # another lm-eval layout: the scan of `_run_flag_problem` alone
        return None

    class Quiet(argparse.ArgumentParser):
        def error(self, message):
            raise _RunArgsNotParsed(message)

        def exit(self, status=0, message=None):
            raise _RunArgsNotParsed(message)

        def print_help(self, file=None):
            pass

    parser = Quiet(add_help=False)
    Command.create(parser.add_subparsers(dest="command", parser_class=Quiet))
    run_argv = argv if argv[:1] == [command] else [command, *argv]
    try:
        parsed, _ = parser.parse_known_args(run_argv)
    except (_RunArgsNotParsed, TypeError, ValueError):
        return None
    return parsed


def _run_flag_problem(argv: list[str], parsed=None) -> str | None:
    """What is wrong with a run's `--limit` (`-L`: zero, negative or NaN failed in lm-eval with messages that did not
    name it) or `--num_fewshot` (`-f`), before lm-eval loads the model: a negative count (lm-eval's
    CLI ran it and reported "n-shot -1") or, for the packaged tasks named in `--tasks` (`-t`), more shots than their
    few-shot pool (lm-eval failed with a bare "Sample larger than population" once the model was loaded). `None`
    when nothing is wrong or the flag is absent; a value that is not an int is left to lm-eval's own parser.

    `parsed` is `_parsed_run(argv)`, the values as lm-eval reads them (abbreviated and joined spellings included);
    without it `argv` is scanned for the full flag names and their short forms."""
    from .harness import check_fewshot_pool

    if parsed is not None:
        limit = None if parsed.limit is None else str(parsed.limit)
        shots = None if parsed.num_fewshot is None else str(parsed.num_fewshot)
        return _flag_values_problem(shots, list(parsed.tasks or []), limit, check_fewshot_pool)
    shots, tasks, limit, i = None, [], None, 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in ("--limit", "-L"):
            if eq:
                limit = value
            elif i + 1 < len(argv):
                limit, i = argv[i + 1], i + 1
        elif name in ("--num_fewshot", "-f"):
            if eq:
                shots = value
            elif i + 1 < len(argv):
                shots, i = argv[i + 1], i + 1
        elif name in ("--tasks", "-t"):
            values = [value] if eq else []
            while not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                values, i = [*values, argv[i + 1]], i + 1
            tasks = [t for v in values for t in v.replace(",", " ").split()]
        i += 1
    return _flag_values_problem(shots, tasks, limit, check_fewshot_pool)


def _flag_values_problem(shots: str | None, tasks: list[str], limit: str | None, check_fewshot_pool) -> str | None:
    """The problem with a run's `--num_fewshot` / `--limit` values (as given on the command line), or `None`."""
    try:
        share = float(limit) if limit is not None else None
    except ValueError:
        share = None
    if share is not None and not 0 < share < math.inf:  # lm-eval failed in islice / "did not find any docs"
        return f"--limit must be a positive number of items (or a share below 1), got {limit}."
    try:
        k = int(shots) if shots is not None else None
    except ValueError:
        return None
    if k is None:
        return None
    if k < 0:
        return f"--num_fewshot must be a non-negative number of few-shot examples, got {k}; pass 0 or more."
    try:
        check_fewshot_pool(tasks, [k], "--num_fewshot")
    except ValueError as err:
        return f"{err} Pass a smaller --num_fewshot."
    return None


def _config_sets_include_path(argv: list[str], path: str | None = None) -> bool:
    """Whether a `--config`/`-C` YAML in `argv` (or at `path`, where lm-eval's parser found it) sets its own
    `include_path` (lm-eval ranks a command-line `--include_path` above the file's, so adding the packaged folder
    would replace the user's)."""
    for i, arg in enumerate(argv if path is None else ()):
        if arg in ("--config", "-C") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg.startswith("-C") and len(arg) > 2:
            path = arg[2:]
    if path is None:
        return False
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, ValueError, yaml.YAMLError):  # lm-eval reports an unreadable config itself
        return False
    return isinstance(config, dict) and bool(config.get("include_path"))


if __name__ == "__main__":
    main()
