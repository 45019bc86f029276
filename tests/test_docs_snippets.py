"""The Python examples in README.md, docs/ and model_cards/ are valid Python and call what exists: every import
resolves, and every call whose target can be resolved statically (an imported function or class, a method of an
object a snippet built) binds its positional and keyword arguments to the real signature.

A snippet's undefined names (`model`, `ds`, ...) are left alone; `...` stands for "other arguments" and is not counted.
"""

from __future__ import annotations

import ast
import glob
import importlib
import inspect
import os
import re
import typing

import pytest

DOC_FILES = ("README.md", "docs/*.md", "model_cards/*.md", "hf_ext/evaluation/metrics/*/README.md")  # + metric cards


def python_snippets(root: str) -> list[tuple[str, str]]:
    """(file:line, code) of every ```python block."""
    out = []
    for pattern in DOC_FILES:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            for m in re.finditer(r"```python\n(.*?)```", text, re.S):
                out.append((f"{os.path.relpath(path, root)}:{text[: m.start()].count(chr(10)) + 2}", m.group(1)))
    return out


class Instance:
    """A value a snippet built: an instance of `cls`."""

    def __init__(self, cls):
        self.cls = cls


_UNKNOWN = object()


def _import(module: str, problems: list[str], where: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        problems.append(f"{where}: import {module} fails: {err}")
        return _UNKNOWN


def _return_instance(fn, owner=None):
    """What calling `fn` gives, when its annotation names a class (`Self` / the owner for alternate constructors)."""
    if inspect.isclass(fn):
        return Instance(fn)
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # unresolvable annotation: the result is unknown
        return _UNKNOWN
    if hint is typing.Self and owner is not None:
        return Instance(owner)
    return Instance(hint) if inspect.isclass(hint) and hint is not type(None) else _UNKNOWN


class SnippetChecker(ast.NodeVisitor):
    def __init__(self, where: str):
        self.where = where
        self.env: dict[str, object] = {}
        self.problems: list[str] = []
        self.calls_checked = 0

    # ---- names -------------------------------------------------------------------------------------------------
    def visit_Import(self, node):
        for alias in node.names:
            module = _import(alias.name, self.problems, self.where)
            if alias.asname:
                self.env[alias.asname] = module
            else:
                top = alias.name.split(".")[0]
                self.env[top] = _import(top, self.problems, self.where) if module is not _UNKNOWN else _UNKNOWN

    def visit_ImportFrom(self, node):
        module = _import(node.module, self.problems, self.where)
        for alias in node.names:
            value = _UNKNOWN
            if module is not _UNKNOWN:
                if hasattr(module, alias.name):
                    value = getattr(module, alias.name)
                else:
                    try:
                        value = importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        self.problems.append(f"{self.where}: {node.module} has no name {alias.name}")
            self.env[alias.asname or alias.name] = value

    def visit_Assign(self, node):
        self.visit(node.value)
        value = self.infer(node.value)
        for target in node.targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    self.env[name.id] = value if isinstance(target, ast.Name) else _UNKNOWN

    def resolve(self, node):
        """The object an expression names: a module, class, function, `Instance`, or `_UNKNOWN`."""
        if isinstance(node, ast.Name):
            return self.env.get(node.id, _UNKNOWN)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            if base is _UNKNOWN:
                return _UNKNOWN
            owner = base.cls if isinstance(base, Instance) else base
            if not hasattr(owner, node.attr):
                if inspect.ismodule(owner) or (inspect.isclass(owner) and not isinstance(base, Instance)):
                    self.problems.append(f"{self.where}: {owner.__name__} has no attribute {node.attr}")
                return _UNKNOWN  # an instance attribute set in __init__ is not visible on the class
            return getattr(owner, node.attr)
        return _UNKNOWN

    def infer(self, node):
        if isinstance(node, ast.Call):
            target = self.resolve(node.func)
            if target is _UNKNOWN or isinstance(target, Instance) or inspect.ismodule(target):
                return _UNKNOWN
            owner = None
            if isinstance(node.func, ast.Attribute):
                base = self.resolve(node.func.value)
                owner = base.cls if isinstance(base, Instance) else base if inspect.isclass(base) else None
            return _return_instance(target, owner)
        if isinstance(node, ast.Name):
            return self.env.get(node.id, _UNKNOWN)
        return _UNKNOWN

    # ---- calls -------------------------------------------------------------------------------------------------
    def visit_Call(self, node):
        self.generic_visit(node)
        target = self.resolve(node.func)
        if target is _UNKNOWN or isinstance(target, Instance) or inspect.ismodule(target) or not callable(target):
            return
        base = self.resolve(node.func.value) if isinstance(node.func, ast.Attribute) else None
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # a builtin without a signature
            return
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            return  # *args / **kwargs at the call: nothing to count
        positional = [a for a in node.args if not (isinstance(a, ast.Constant) and a.value is Ellipsis)]
        args = [None] * len(positional)
        if isinstance(base, Instance) and inspect.isfunction(target):
            # a plain method looked up on the instance's class: `self` comes first
            if not isinstance(inspect.getattr_static(base.cls, node.func.attr), (staticmethod, classmethod)):
                args = [None, *args]
        try:
            try:
                signature.bind_partial(*args, **{k.arg: None for k in node.keywords})
            except TypeError:
                if not hasattr(target, "__wrapped__"):
                    raise
                # a wrapper (transformers' auto classes copy their classmethods) takes what its own signature says
                inspect.signature(target, follow_wrapped=False).bind_partial(
                    *args, **{k.arg: None for k in node.keywords}
                )
        except TypeError as err:
            name = getattr(target, "__qualname__", repr(target))
            self.problems.append(f"{self.where}: {ast.unparse(node)[:100]} does not fit {name}: {err}")
        self.calls_checked += 1


def check(where: str, code: str, env: dict | None = None) -> SnippetChecker:
    """Check one snippet; `env` holds the names earlier snippets of the same page defined (a reader has them)."""
    checker = SnippetChecker(where)
    checker.env = env if env is not None else {}
    checker.visit(ast.parse(code))
    return checker


def test_every_python_example_is_valid_python(repo_root):
    snippets = python_snippets(repo_root)
    assert len(snippets) >= 30  # the extraction works
    problems = []
    for where, code in snippets:
        try:
            ast.parse(code)
        except SyntaxError as err:
            problems.append(f"{where}: {err.msg} (snippet line {err.lineno})")
    assert not problems, "\n".join(problems)


def test_every_python_example_calls_what_exists(repo_root):
    problems, calls, pages = [], 0, {}
    for where, code in python_snippets(repo_root):
        try:
            checker = check(where, code, pages.setdefault(where.split(":")[0], {}))
        except SyntaxError:
            continue  # reported by the test above
        problems += checker.problems
        calls += checker.calls_checked
    assert calls >= 60  # most calls resolve: a checker that resolves nothing would pass vacuously
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "code, expected",
    [
        ("from hf_ext.optim import LionAR\nLionAR(model, lr=1e-3, betass=(0.9, 0.9))", "betass"),
        ("from hf_ext.fp8 import convert\nconvert(model, backendd='te')", "backendd"),
        ("from hf_ext.optim import NoSuchOptimizer", "no name NoSuchOptimizer"),
        ("import hf_ext.no_such_module", "import hf_ext.no_such_module fails"),
        (
            "from hf_ext.models.layer_parallel import convert_to_layer_parallel\nconvert_to_layer_parallel(m, startt=1)",
            "startt",
        ),
        (
            "from hf_ext.models.layer_parallel import convert_to_layer_parallel\nconvert_to_layer_parallel(m, 1, 2, 3, 4, 5)",
            "too many",
        ),
        (  # a method of an object the snippet built
            "from hf_ext.compliance import RobotsCompliance, RobotsTxtStore\n"
            "checker = RobotsCompliance(RobotsTxtStore.from_dict({}))\nchecker.is_compliant('u', 'v', 'w', 'x')",
            "is_compliant",
        ),
        ("from hf_ext.models.fog import FogConfig\nFogConfig.no_such_constructor()", "no attribute"),
    ],
)
def test_the_checker_catches_wrong_calls(code, expected):
    assert any(expected in p for p in check("t", code).problems)


def test_the_checker_accepts_right_calls():
    code = (
        "from hf_ext.optim import LionAR\nfrom hf_ext.models.fog import FogConfig\n"
        "LionAR(model, lr=1e-3)\ncfg = FogConfig.fog(hidden_size=64)\ncfg.to_dict()\n"
        "from transformers import TrainingArguments\nTrainingArguments(..., remove_unused_columns=False)"
    )
    checker = check("t", code)
    assert not checker.problems and checker.calls_checked == 4
