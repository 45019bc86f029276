"""Two classes of documented claim checked mechanically:

* every repository test a docstring, comment or message of `hf_ext/` and `scripts/` cites as evidence
  (`tests/....py`, optionally `::test_name`) exists: `tests/test_docs_commands.py` checks the citations of the
  Markdown docs, not those of the code, which `help()` and error messages show;
* every file name the docs say a run writes or reads (`` `pretrain_results.json` ``, `` `kurtosis.png` ``, ...) is one
  the code or the repository has: a renamed output would leave the docs sending the user to a file no run writes.
"""

from __future__ import annotations

import glob
import os
import re

# transformers' own test files, which hf_ext's conformance harness names (not in this repository by design)
_TRANSFORMERS_TESTS = {
    "tests/causal_lm_tester.py",
    "tests/distributed_testing_utils.py",
    "tests/generation/test_utils.py",
    "tests/test_modeling_common.py",
    "tests/test_training_mixin.py",
}
# a repository test path, not a pattern such as `tests/test_*_mixin.py`, optionally `::test_name` (or a prefix*)
_TEST_REFERENCE = re.compile(r"(?<![\w/])(tests/[\w/.-]*\w\.py)(?![\w/*<-])(?:::([\w*]+))?")


def _code_files(root: str) -> list[str]:
    found = []
    for pattern in ("hf_ext/**/*.py", "scripts/**/*.py"):
        found += glob.glob(os.path.join(root, pattern), recursive=True)
    return sorted(found)


def cited_test_problems(root: str, texts: dict[str, str]) -> tuple[list[str], int]:
    """(problems, citations checked) of the `tests/...py[::name]` citations in `texts` ({where: text})."""
    problems, checked = [], 0
    for where, text in texts.items():
        for m in _TEST_REFERENCE.finditer(text):
            target, test = m.group(1), m.group(2)
            if target in _TRANSFORMERS_TESTS:
                continue
            checked += 1
            line = f"{where}:{text[: m.start()].count(chr(10)) + 1}"
            path = os.path.join(root, target)
            if not os.path.isfile(path):
                problems.append(f"{line}: {target} does not exist")
            elif test:
                with open(path, encoding="utf-8") as handle:
                    source = handle.read()
                name = test.rstrip("*")
                pattern = rf"def {re.escape(name)}\w*\(" if test.endswith("*") else rf"def {re.escape(name)}\("
                if not re.search(pattern, source):
                    problems.append(f"{line}: {target} has no test {test}")
    return problems, checked


def test_every_test_the_code_cites_exists(repo_root):
    texts = {}
    for path in _code_files(repo_root):
        with open(path, encoding="utf-8") as handle:
            texts[os.path.relpath(path, repo_root)] = handle.read()
    problems, checked = cited_test_problems(repo_root, texts)
    assert checked >= 1  # e.g. the cubic Newton recipe's docstring
    assert not problems, "\n".join(problems)


def test_the_citation_check_catches_a_missing_test(repo_root):
    problems, checked = cited_test_problems(
        repo_root,
        {
            "a.py": "see tests/test_docs_dt48.py::test_every_test_the_code_cites_exists",
            "b.py": "see tests/test_docs_dt48.py::test_no_such_test and tests/no_such_file.py",
            "c.py": "transformers' tests/test_modeling_common.py, a pattern tests/test_*_mixin.py",
        },
    )
    assert checked == 3
    assert problems == [
        "b.py:1: tests/test_docs_dt48.py has no test test_no_such_test",
        "b.py:1: tests/no_such_file.py does not exist",
    ]


DOC_FILES = ("README.md", "docs/*.md", "model_cards/*.md")
# a file name in a code span: `name.ext` (no folder, no placeholder)
_FILE_NAME = re.compile(r"`([\w.-]+\.(?:json|jsonl|png|pdf|pgf|csv|md|txt|pt|pth|bin|safetensors|parquet|yaml))`")
# names the docs use that are formed at run time from a value the user gives (not a literal of the code)
_FORMED = {
    "output-path.json": "the Flower App writes the global state's metadata to `<output-path>.json`",
}


def _code_literals(root: str) -> tuple[str, list[re.Pattern]]:
    """The text of hf_ext/ and scripts/, and the file-name templates in it (`loss_window_{}.json`) as patterns."""
    text = ""
    for path in _code_files(root):
        with open(path, encoding="utf-8") as handle:
            text += handle.read()
    templates = []
    for m in re.finditer(r"[\"']([\w.-]*\{[\w!:]*\}[\w.{}!:-]*)[\"']", text):
        parts = re.split(r"\{[\w!:]*\}", m.group(1))
        stem = "".join(parts).rsplit(".", 1)[0]
        if "." in parts[-1] and len(stem) >= 3:  # not `{path_prefix}.json`, which would match any name
            templates.append(re.compile(".+".join(re.escape(p) for p in parts) + r"\Z"))
    return text, templates


def documented_file_name_problems(root: str, docs: dict[str, str]) -> tuple[list[str], int]:
    code, templates = _code_literals(root)
    repo_names = set()
    for folder in ("scripts", "examples", "hf_ext", "tests", "docs", "model_cards"):
        repo_names |= {os.path.basename(p) for p in glob.glob(os.path.join(root, folder, "**", "*"), recursive=True)}
    problems, checked = [], 0
    for where, text in docs.items():
        for m in _FILE_NAME.finditer(text):
            name = m.group(1)
            checked += 1
            if name in _FORMED or name in repo_names or name in code:
                continue
            if any(t.match(name) for t in templates):
                continue
            problems.append(f"{where}:{text[: m.start()].count(chr(10)) + 1}: `{name}` is written by no code")
    return problems, checked


def test_every_file_name_the_docs_cite_is_the_codes(repo_root):
    docs = {}
    for pattern in DOC_FILES:
        for path in sorted(glob.glob(os.path.join(repo_root, pattern))):
            with open(path, encoding="utf-8") as handle:
                docs[os.path.relpath(path, repo_root)] = handle.read()
    problems, checked = documented_file_name_problems(repo_root, docs)
    assert checked >= 100  # results, run records, checkpoints' state files, figures
    assert not problems, "\n".join(problems)


def test_the_file_name_check_catches_a_renamed_output(repo_root):
    problems, checked = documented_file_name_problems(
        repo_root,
        {
            "x.md": "writes `pretrain_results.json`, `loss_window_1.json` and `cpu_2ranks.yaml`",
            "y.md": "writes `pretrain_result.json`",
        },
    )
    assert checked == 4
    assert problems == ["y.md:1: `pretrain_result.json` is written by no code"]
