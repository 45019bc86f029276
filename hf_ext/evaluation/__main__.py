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
    # `run` (or lm-eval's legacy form without a subcommand), `ls` and `validate` all take --include_path; only the
    # bare help screens (no arguments, -h, a lone `run`) must stay as lm-eval prints them.
    if (
        argv
        and argv[0] not in ("-h", "--help")
        and argv != ["run"]
        and not any(a == "--include_path" or a.startswith("--include_path=") for a in argv)
        and not _config_sets_include_path(argv)
    ):
        argv += ["--include_path", task_dir()]
    if argv and argv[0] not in ("ls", "validate", "-h", "--help"):
        problem = _run_flag_problem(argv)
        if problem is not None:  # lm-eval ran --num_fewshot -1 (as n-shot -1), failed on 40 after the model load
            print(f"python -m hf_ext.evaluation: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as err:  # pragma: no cover
        raise SystemExit("lm-eval is not installed: `pip install 'hf_ext[eval]'`.") from err
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


def _run_flag_problem(argv: list[str]) -> str | None:
    """What is wrong with a run's `--limit` (`-L`: zero, negative or NaN failed in lm-eval with messages that did not
    name it) or `--num_fewshot` (`-f`), before lm-eval loads the model: a negative count (lm-eval's
    CLI ran it and reported "n-shot -1") or, for the packaged tasks named in `--tasks` (`-t`), more shots than their
    few-shot pool (lm-eval failed with a bare "Sample larger than population" once the model was loaded). `None`
    when nothing is wrong or the flag is absent; a value that is not an int is left to lm-eval's own parser."""
    from .harness import check_fewshot_pool

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


def _config_sets_include_path(argv: list[str]) -> bool:
    """Whether a `--config`/`-C` YAML in `argv` sets its own `include_path` (lm-eval ranks a command-line
    `--include_path` above the file's, so adding the packaged folder would replace the user's)."""
    path = None
    for i, arg in enumerate(argv):
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
