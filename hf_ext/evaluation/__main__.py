"""`python -m hf_ext.evaluation <lm-eval arguments>`: lm-eval's own CLI with hf_ext's Auto classes registered and the
packaged tasks on the include path, so `--model hf --model_args pretrained=<folder>` loads hf_ext models without
`trust_remote_code`. `python -m hf_ext.evaluation task_dir` prints the packaged task folder. An `--include_path` of
the user's, on the command line or in a `--config` YAML, is used as given."""

from __future__ import annotations

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
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as err:  # pragma: no cover
        raise SystemExit("lm-eval is not installed: `pip install 'hf_ext[eval]'`.") from err
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


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
