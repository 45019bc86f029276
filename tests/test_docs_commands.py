"""Every command line the docs show (`python scripts/X.py --flag ...`, `hf-ext run X --flag ...`) names flags that
script really accepts, and, where the command has no placeholders, parses and passes the recipe's own checks.

A user copies these lines; a renamed or removed flag would otherwise only show as an argparse error on their side.
Every documented `hf-ext reproduce <method> [flags]` command goes through the real CLI up to the reproduction (not
run): the method is registered, the flags parse and the seeds respect the method's minimum. Every repository file and
test the docs cite exists too.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import runpy
import shlex

import pytest

DOC_FILES = ("README.md", "docs/*.md", "model_cards/*.md", "hf_ext/evaluation/metrics/*/README.md")  # + metric cards
# `scripts/<name>.py` (the repository's, not a test helper such as `tests/hyperinf/scripts/<name>.py`), `hf-ext run
# <name>` or `-m hf_ext.recipes.<name>` (the wheel-install form), then its arguments up to a comment, a pipe, `;`, `&&`
# or a redirect.
_COMMAND = re.compile(r"(?:(?<![\w-]/)scripts/(\w+)\.py|hf-ext run (\w+)|-m hf_ext\.recipes\.(\w+))([^#|;&>]*)")
# commands that read an example path or an earlier command's checkpoint: parsed, but the recipe's checks would refuse
# the missing input (as they should)
_INPUT_PATH_FLAGS = {
    "--model_name_or_path", "--train_file", "--validation_file", "--mixture_file", "--resume_from_checkpoint"
}  # fmt: skip
_PLACEHOLDER = re.compile(
    r"\$|<|\{|\.\.\.|^[A-Z]+[0-9]?$|[a-z]S$"
)  # $seed, <causal-lm>, {a,b}, ..., M / LR / B2, seedS


def _doc_paths(root: str) -> list[str]:
    out = []
    for pattern in DOC_FILES:
        out.extend(sorted(glob.glob(os.path.join(root, pattern))))
    return out


def _code_lines(text: str):
    """(line number, text) of every line inside fenced blocks (continuations joined) and of every inline code span."""
    for m in re.finditer(r"```[^\n]*\n(.*?)```", text, re.S):
        first = text[: m.start()].count("\n") + 2
        for i, line in enumerate(m.group(1).replace("\\\n", " ").splitlines()):
            yield first + i, line
    outside = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    # a span may wrap over lines of its paragraph (never over a blank line); its lines are joined by one space
    for m in re.finditer(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`", outside):
        yield outside[: m.start()].count("\n") + 1, " ".join(m.group(1).split())


def _doc_code_lines(root: str):
    """(path relative to `root`, line number, command line) of every code line of every documented file."""
    for path in _doc_paths(root):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        rel = os.path.relpath(path, root)
        for lineno, line in _code_lines(text):
            yield rel, lineno, line


def documented_commands(root: str) -> list[tuple[str, str, list[str]]]:
    """(where, script name, argv) for every documented command with at least one argument."""
    found = []
    for rel, lineno, line in _doc_code_lines(root):
        for m in _COMMAND.finditer(line):
            argv = []
            for token in shlex.split(m.group(4).split("(")[0]):  # prose after "(" is not part of the command
                argv.append(token)
            if argv and argv != ["..."]:
                found.append((f"{rel}:{lineno}", m.group(1) or m.group(2) or m.group(3), argv))
    return found


def _line(root: str, where: str) -> str:
    """The text of the doc line `where` (`path:lineno`)."""
    path, lineno = where.rsplit(":", 1)
    with open(os.path.join(root, path), encoding="utf-8") as handle:
        return handle.read().splitlines()[int(lineno) - 1]


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def parser_of(root: str, name: str) -> argparse.ArgumentParser:
    """The argument parser `scripts/<name>.py` builds, captured when its `main` starts parsing (no work is done)."""
    if name not in _PARSERS:
        original = argparse.ArgumentParser.parse_known_args

        def capture(self, *args, **kwargs):
            raise _Captured(self)

        argparse.ArgumentParser.parse_known_args = capture
        try:
            namespace = runpy.run_path(os.path.join(root, "scripts", f"{name}.py"), run_name="docs_check")
            with pytest.raises(_Captured) as caught:
                namespace["main"]([])
        finally:
            argparse.ArgumentParser.parse_known_args = original
        _PARSERS[name] = caught.value.parser
    return _PARSERS[name]


def _option_names(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def test_the_docs_show_commands_of_every_recipe(repo_root):
    names = {name for _, name, _ in documented_commands(repo_root)}
    # the extraction works: flags of the main recipes and benches are checked below (a broken regex finds nothing)
    assert {"pretrain", "grape", "neuralgrok", "layer_parallel", "federated", "hyperinf", "bench_fp8"} <= names
    # the module form a wheel install runs (`torchrun -m hf_ext.recipes.pretrain ...`) is extracted and checked too
    assert any(
        where.startswith("README.md") and name == "pretrain" and argv[0] == "--use_cpu"
        for where, name, argv in documented_commands(repo_root)
        if "hf_ext.recipes" in _line(repo_root, where)
    )


def test_commands_in_inline_code_that_wraps_over_lines_are_extracted(repo_root):
    """An inline code span wrapped over two lines of its paragraph is one command: its flags are checked too (these
    spans used to be skipped: the federated, warmup and synthetic metadata commands were never checked)."""
    text = (
        "Run `python scripts/warmup.py --max_steps 2\n--seed 0` then `a` and\n\n`b` and `hf-ext run pretrain\n\n--x`."
    )
    assert list(_code_lines(text)) == [(1, "python scripts/warmup.py --max_steps 2 --seed 0"), (2, "a"), (4, "b")]
    found = {(where.split(":")[0], name, tuple(argv)) for where, name, argv in documented_commands(repo_root)}
    assert any(path == "docs/federated.md" and name == "federated" and "--local_steps" in argv
               for path, name, argv in found)  # fmt: skip
    assert any(path == "docs/metadata.md" and name == "metadata_pretrain" and "--doc_eval_steps" in argv
               for path, name, argv in found)  # fmt: skip


@pytest.mark.parametrize("name", ["pretrain", "grape", "bench_fp8", "run_transformers_conformance"])
def test_the_parser_capture_sees_the_real_options(repo_root, name):
    options = _option_names(parser_of(repo_root, name))
    assert "--help" in options and len(options) > 3
    assert "--no_such_flag_anywhere" not in options


# scripts that hand what follows `--` to a recipe: those flags are the recipe's
_PASS_THROUGH = {"bench_neuralgrok": "neuralgrok"}


def _split_pass_through(name: str, argv: list[str]) -> tuple[list[str], list[str]]:
    """`(the script's own arguments, the arguments it hands to its recipe after "--")`."""
    if name in _PASS_THROUGH and "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def test_every_documented_flag_exists(repo_root):
    problems = []
    for where, name, argv in documented_commands(repo_root):
        if not os.path.exists(os.path.join(repo_root, "scripts", f"{name}.py")):
            problems.append(f"{where}: scripts/{name}.py does not exist")
            continue
        own, passed = _split_pass_through(name, argv)
        for script, tokens in ((name, own), (_PASS_THROUGH.get(name), passed)):
            if not tokens:
                continue
            options = _option_names(parser_of(repo_root, script))
            for token in tokens:
                flag = token.split("=", 1)[0]
                if flag.startswith("--") and flag not in options:
                    problems.append(f"{where}: {script} has no flag {flag}")
    assert not problems, "\n".join(problems)


def test_pass_through_flags_are_checked_against_the_recipe(repo_root):
    own, passed = _split_pass_through("bench_neuralgrok", ["--steps", "8", "--", "--outer_every", "2"])
    assert own == ["--steps", "8"] and passed == ["--outer_every", "2"]
    assert "--outer_every" in _option_names(parser_of(repo_root, "neuralgrok"))
    assert "--outer_every" not in _option_names(parser_of(repo_root, "bench_neuralgrok"))


# the function each recipe's `run` (or `main`) calls first to check its arguments before any work
_VALIDATORS = {
    "pretrain": "validate_args",
    "grape": "validate_args",
    "neuralgrok": "validate_args",
    "layer_parallel": "validate_args",
    "federated": "validate",
    "hyperinf": "validate_args",
    "metadata_pretrain": "validate_args",
    "compliance": "_validate",
    "warmup": "validate",
    "cubic_newton": "validate",
}


class _Validated(Exception):
    pass


def test_every_recipe_has_its_validator_listed():
    from hf_ext.recipes import available_recipes

    assert set(available_recipes()) == set(_VALIDATORS)


def test_documented_commands_without_placeholders_pass_the_scripts_checks(repo_root, tmp_path, monkeypatch):
    """The whole command parses (types, choices) and passes the recipe's own argument checks (run up to them only)."""
    import importlib

    import torch

    from hf_ext.utils.resume import normalize_resume_argv

    monkeypatch.chdir(tmp_path)  # relative --output_dir of the docs land here if a check creates a folder
    problems = []
    checked = 0
    for where, name, argv in documented_commands(repo_root):
        if any(_PLACEHOLDER.search(token) for token in argv) or "--help" in argv:
            continue
        if not os.path.exists(os.path.join(repo_root, "scripts", f"{name}.py")):
            continue  # reported by the test above
        command = f"{where}: {name} {' '.join(argv)}"
        checked += 1
        if name not in _VALIDATORS or _INPUT_PATH_FLAGS & set(argv):  # a bench script, or the docs' example paths
            own, passed = _split_pass_through(name, argv)
            try:
                parser_of(repo_root, name).parse_args(normalize_resume_argv(list(own)) if name in _VALIDATORS else own)
                if passed:  # what the script hands to its recipe parses there
                    parser_of(repo_root, _PASS_THROUGH[name]).parse_args(passed)
            except SystemExit as err:
                problems.append(f"{command} -> argparse exit {err.code}")
            continue
        module = importlib.import_module(f"hf_ext.recipes.{name}")
        original = getattr(module, _VALIDATORS[name])

        def checked_then_stop(*args, _original=original, **kwargs):
            _original(*args, **kwargs)
            raise _Validated

        monkeypatch.setattr(module, _VALIDATORS[name], checked_then_stop)
        try:
            module.main(list(argv))
            problems.append(f"{command} -> ran without reaching {_VALIDATORS[name]}")
        except _Validated:
            pass
        except SystemExit as err:  # argparse's error exit
            problems.append(f"{command} -> argparse exit {err.code}")
        except (ValueError, TypeError) as err:
            if not ("CUDA" in str(err) and not torch.cuda.is_available()):  # GPU-only commands fail here by design
                problems.append(f"{command} -> {type(err).__name__}: {err}")
        finally:
            monkeypatch.setattr(module, _VALIDATORS[name], original)
    assert checked >= 20
    assert not problems, "\n".join(problems)


# files the docs name that are transformers' own test helpers (not in this repository by design)
_NOT_OURS = {"tests/distributed_testing_utils.py"}
# a path inside the repository, not a pattern such as `scripts/bench_<topic>.py`, optionally `::test_name` (or a prefix*)
_FILE_REFERENCE = re.compile(
    r"(?<![\w/])((?:tests|scripts|examples|docs|model_cards)/[\w/.-]*\w)(?![\w/.<-])(?:::([\w*]+))?"
)


def test_every_file_and_test_the_docs_cite_exists(repo_root):
    """A cited test is the evidence for a claim: a renamed or removed one leaves the claim without it."""
    problems, cited_tests = [], 0
    for path in _doc_paths(repo_root):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        rel = os.path.relpath(path, repo_root)
        for m in _FILE_REFERENCE.finditer(text):
            target, test = m.group(1), m.group(2)
            where = f"{rel}:{text[: m.start()].count(chr(10)) + 1}"
            if target in _NOT_OURS or "*" in target or "<" in target:
                continue
            if not os.path.exists(os.path.join(repo_root, target)):
                problems.append(f"{where}: {target} does not exist")
            elif test:
                cited_tests += 1
                with open(os.path.join(repo_root, target), encoding="utf-8") as handle:
                    source = handle.read()
                pattern = rf"def {re.escape(test[:-1])}\w*\(" if test.endswith("*") else rf"def {re.escape(test)}\("
                if not re.search(pattern, source):
                    problems.append(f"{where}: {target} has no test {test}")
    assert cited_tests >= 10  # the docs cite tests as evidence throughout
    assert not problems, "\n".join(problems)


# `hf-ext reproduce <method> [flags]` up to a comment, a pipe, `;`, `&&`, a redirect, the end of a code span or prose
# in parentheses; a template (`<method>`, `[--seeds N]`, `DIR`) is skipped by _REPRODUCE_PLACEHOLDER.
_REPRODUCE = re.compile(r"hf-ext reproduce\b([^#|;&>`(]*)")
_REPRODUCE_PLACEHOLDER = re.compile(r"\$|<|\.\.\.|\[|^[A-Z]+$")


def documented_reproduce_commands(root: str) -> list[tuple[str, list[str]]]:
    """(where, argv after `hf-ext reproduce`) for every documented `hf-ext reproduce` command with arguments and no
    placeholder."""
    found = []
    for rel, lineno, line in _doc_code_lines(root):
        for m in _REPRODUCE.finditer(line):
            argv = shlex.split(m.group(1))
            if argv and not any(_REPRODUCE_PLACEHOLDER.search(token) for token in argv):
                found.append((f"{rel}:{lineno}", argv))
    return found


class _Reproduced(BaseException):  # not an Exception: the CLI reports those as a failed run (exit 4)
    pass


@pytest.fixture
def reproduce_cli(tmp_path, monkeypatch, capsys):
    """`check(argv)`: run `hf-ext reproduce <argv>` through the real CLI up to the call of the reproduction (not run):
    the method is registered, the flags parse, the seeds are at least the method's minimum and `--output_dir` is
    writable. Returns `None`, or the problem."""
    import hf_ext.reproduce
    from hf_ext.cli import main

    def stop(method, **kwargs):
        raise _Reproduced(method, kwargs)

    monkeypatch.setattr(hf_ext.reproduce, "reproduce", stop)
    monkeypatch.chdir(tmp_path)  # a relative --output_dir of the docs is created here

    def check(argv: list[str]) -> str | None:
        try:
            code = main(["reproduce", *argv])
        except _Reproduced as reached:
            method, kwargs = reached.args
            if method != argv[0]:
                return f"reproduced {method!r}, not {argv[0]!r}"
            if "--seeds" in argv and kwargs["seeds"] != int(argv[argv.index("--seeds") + 1]):
                return f"--seeds reached the run as {kwargs['seeds']}"
            return None
        except SystemExit as err:
            return f"usage error (exit {err.code}): {capsys.readouterr().err.strip().splitlines()[-1]}"
        if argv != ["--list"]:
            return f"returned {code} without reaching the reproduction"
        return None

    return check


def test_every_documented_reproduce_command_parses_against_the_real_cli(repo_root, reproduce_cli):
    """Every `hf-ext reproduce <method> [--seeds N] [--jobs J] [--fast] [--output_dir D]` line of the docs names a
    registered method, valid flags and at least the method's minimum seeds (checked by the CLI, not run)."""
    from hf_ext.reproduce import available_methods

    commands = documented_reproduce_commands(repo_root)
    problems = [f"{where}: hf-ext reproduce {' '.join(argv)} -> {p}" for where, argv in commands
                if (p := reproduce_cli(argv))]  # fmt: skip
    assert not problems, "\n".join(problems)
    assert len(commands) >= 25  # the extraction works (about 30 such lines)
    # each registered method has its documented command in docs/reproductions.md
    listed = {argv[0] for where, argv in commands if where.startswith("docs/reproductions.md")}
    assert set(available_methods()) <= listed, sorted(set(available_methods()) - listed)


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["cubic_newton", "--seeds", "3"], "usage error \\(exit 2\\): .*--seeds 3 cannot give a verdict"),
        (["no_such_method"], "usage error \\(exit 2\\): .*unknown method 'no_such_method'"),
        (["grape", "--sedes", "3"], "usage error \\(exit 2\\): .*unrecognized arguments: --sedes 3"),
        (["grape", "--jobs", "0"], "usage error \\(exit 2\\): .*--jobs must be >= 1"),
    ],
)
def test_the_reproduce_check_catches_a_bad_documented_command(reproduce_cli, argv, problem):
    assert re.search(problem, reproduce_cli(argv) or "")
    assert reproduce_cli(["grape", "--seeds", "3", "--jobs", "2"]) is None
