"""The docstrings of hf_ext's functions and classes say what the code takes: every argument an `Args:` section lists
is a parameter (or dataclass field) of what it documents, and every `name (`type`, *optional*, defaults to X):` line
states the default the signature (or the dataclass field) really has.

`tests/test_docs_dt41.py` compares the defaults the Markdown docs quote; nothing read the docstrings, which are what
`help()`, IDEs and the API pages show. A default changed in the code and not in its docstring (or a renamed argument)
fails here, naming the function and the argument.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re

import pytest

# `name (`type`, *optional*, defaults to X):` (transformers' docstring convention; `*optional*` may be left out)
_DEFAULT_LINE = re.compile(r"^\s*(\w+) \(`[^`]*`(?:, \*optional\*)?, defaults to (.+?)\):", re.M)
# an argument entry of an `Args:` section: `name (`type`...):`
_ARG_LINE = re.compile(r"^(\s*)(\w+) \(`[^`]*`[^)\n]*\):", re.M)
_ARGS_SECTION = re.compile(r"^(?:Args|Arguments|Parameters):\n(.*?)(?=^\S|\Z)", re.M | re.S)
_UNKNOWN = object()


def _documented_objects():
    """(module, qualified name, object) of every function, class and method defined in an hf_ext module (the packaged
    lm-eval task code and the `evaluate` metric scripts are loaded by those libraries, not imported here)."""
    import hf_ext

    seen = set()
    for info in pkgutil.walk_packages(hf_ext.__path__, "hf_ext."):
        if ".tasks" in info.name or ".metrics." in info.name or info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra (Flower, datatrove, Transformer Engine) that is not installed
            continue
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__ or id(obj) in seen:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                seen.add(id(obj))
                yield module, name, obj
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    func = getattr(value, "__func__", value)
                    if inspect.isfunction(func) and id(func) not in seen:
                        seen.add(id(func))
                        yield module, f"{name}.{attr}", func


def _parameters(obj) -> tuple[dict, bool] | None:
    """{name: default} of `obj`'s signature (and dataclass fields), and whether it takes **kwargs."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = {p.name: p.default for p in signature.parameters.values()}
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            if field.default is not dataclasses.MISSING:
                params[field.name] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                params[field.name] = field.default_factory()
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return params, var_keyword


def _documented_value(text: str, module):
    """The value a docstring's `defaults to X` names: a Python literal, or a name in the module (`DEFAULT_...`,
    `torch.float64`)."""
    text = text.strip()
    if text.startswith("`") and text.endswith("`"):
        text = text[1:-1]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if not all(part.isidentifier() for part in text.split(".")):
            return _UNKNOWN
        value = module  # a module-level name, or a dotted one from the module's imports (`torch.float32`)
        for part in text.split("."):
            value = getattr(value, part, _UNKNOWN)
            if value is _UNKNOWN:
                break
        return value


def _is_name(text: str) -> bool:
    text = text.strip().strip("`")
    return all(part.isidentifier() for part in text.split(".")) and text not in ("True", "False", "None")


def default_matches(documented, actual) -> bool:
    """Whether a documented default is the code's (numbers by value, sequences by items; a documented module constant
    also matches a `None` default that the code resolves to it)."""
    if documented is _UNKNOWN:
        return False
    if isinstance(documented, bool) or isinstance(actual, bool):
        return documented is actual
    if isinstance(documented, int | float) and isinstance(actual, int | float):
        return float(documented) == float(actual)
    if isinstance(documented, list | tuple) and isinstance(actual, list | tuple):
        return list(documented) == list(actual)
    return documented == actual


def _own_doc(obj) -> str:
    """The docstring written for `obj` itself (not one inherited from a base class, e.g. transformers')."""
    return inspect.cleandoc(obj.__doc__) if isinstance(getattr(obj, "__doc__", None), str) else ""


def test_docstring_defaults_are_the_codes():
    problems, checked = [], 0
    for module, name, obj in _documented_objects():
        doc = _own_doc(obj)
        if "defaults to" not in doc:
            continue
        found = _parameters(obj)
        if found is None:
            continue
        params, var_keyword = found
        for m in _DEFAULT_LINE.finditer(doc):
            arg, text = m.group(1), m.group(2)
            if arg not in params:
                if not var_keyword:
                    problems.append(f"{module.__name__}.{name}: documents `{arg}`, which it does not take")
                continue
            documented, actual = _documented_value(text, module), params[arg]
            checked += 1
            # `defaults to DEFAULT_X` (a module constant, not a literal) for a `None` parameter the code resolves to it
            if actual is None and documented is not _UNKNOWN and _is_name(text):
                continue
            if not default_matches(documented, actual):
                problems.append(f"{module.__name__}.{name}: `{arg}` documented as defaulting to {text}, is {actual!r}")
    assert checked >= 200  # the library documents its defaults throughout
    assert not problems, "\n".join(problems)


def test_docstring_arguments_exist():
    problems, checked = [], 0
    for module, name, obj in _documented_objects():
        section = _ARGS_SECTION.search(_own_doc(obj))
        if not section:
            continue
        found = _parameters(obj)
        if found is None:
            continue
        params, var_keyword = found
        indent = None
        for m in _ARG_LINE.finditer(section.group(1)):
            indent = m.group(1) if indent is None else indent
            if m.group(1) != indent:  # a nested entry (a key of a dict argument, ...)
                continue
            checked += 1
            if m.group(2) not in params and not var_keyword:
                problems.append(f"{module.__name__}.{name}: `Args` lists `{m.group(2)}`, which it does not take")
    assert checked >= 500
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("documented", "actual", "same"),
    [
        (1e-4, 0.0001, True),
        (0, 0.0, True),
        ((0.9, 0.99), (0.9, 0.99), True),
        ([32, 32], (32, 32), True),
        (True, True, True),
        ("hessian_corrected", "hessian_corrected", True),
        (1e-3, 1e-4, False),
        (True, 1, False),
        ("dense", "fresh", False),
        ((0.9, 0.99), (0.9, 0.999), False),
        (_UNKNOWN, 3, False),
    ],
)
def test_the_comparison_catches_a_wrong_default(documented, actual, same):
    assert default_matches(documented, actual) is same


def test_the_extraction_reads_the_convention():
    doc = """Args:
        lr (`float`, *optional*, defaults to 1e-4): step size.
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.99)`): coefficients.
        mode (`str`, defaults to `"ema"`): which filter.
    """
    found = {m.group(1): _documented_value(m.group(2), None) for m in _DEFAULT_LINE.finditer(inspect.cleandoc(doc))}
    assert found == {"lr": 1e-4, "betas": (0.9, 0.99), "mode": "ema"}
