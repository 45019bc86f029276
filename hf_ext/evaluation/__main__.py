"""`python -m hf_ext.evaluation <lm-eval arguments>`: lm-eval's own CLI with hf_ext's Auto classes registered and the
packaged tasks on the include path, so `--model hf --model_args pretrained=<folder>` loads hf_ext models without
`trust_remote_code`. `python -m hf_ext.evaluation task_dir` prints the packaged task folder."""

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
    ):
        argv += ["--include_path", task_dir()]
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as err:  # pragma: no cover
        raise SystemExit("lm-eval is not installed: `pip install 'hf_ext[eval]'`.") from err
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
