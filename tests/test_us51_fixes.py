"""Pass 41 (us51): first contact from an installed wheel, which has no `scripts/` folder."""

import ast
import re
from pathlib import Path

import pytest

_SCRIPT = re.compile(r"scripts/\w+\.py")
_WHEEL_FORMS = ("hf-ext run", "-m hf_ext.", "hf_ext.recipes.")


def _docstring_nodes(tree: ast.AST) -> set[int]:
    nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                nodes.add(id(first.value))
    return nodes


def test_messages_that_name_a_script_also_name_a_command_an_installed_wheel_has(repo_root):
    """A message or help text that sends the user to `scripts/<recipe>.py` names a command that exists where hf_ext is
    pip-installed too (`hf-ext run <recipe>`, `python -m hf_ext.recipes.<recipe>`): the wheel ships no `scripts/`.
    metadata_pretrain's refusal of an FP8 flag said only "Drop it (scripts/pretrain.py trains in FP8)"."""
    offenders, checked = [], 0
    for path in sorted((Path(repo_root) / "hf_ext").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        docs = _docstring_nodes(tree)
        parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):  # an f-string: its pieces, a placeholder name for each `{...}`
                text = "".join(v.value if isinstance(v, ast.Constant) else "name" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                if isinstance(parents.get(id(node)), ast.JoinedStr):
                    continue  # read with its f-string
                text = node.value
            else:
                continue
            if not _SCRIPT.search(text):
                continue
            statement = node
            while not isinstance(statement, ast.stmt):
                statement = parents[id(statement)]
            checked += 1
            segment = ast.get_source_segment(source, statement) or ""
            if not any(form in segment for form in _WHEEL_FORMS):
                offenders.append(f"{path.relative_to(repo_root)}:{node.lineno}: {text.strip()[:100]!r}")
    assert checked >= 1  # refuse_multiple_processes names scripts/<recipe>.py beside the wheel's forms
    assert not offenders, offenders


def test_metadata_fp8_flag_refusal_names_the_pretrain_command_not_a_checkout_path(tmp_path):
    from hf_ext.recipes.metadata_pretrain import main

    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--fp8_backend is an FP8 option") as err:
        main(["--fp8_backend", "emulated", "--output_dir", str(out)])
    assert "scripts/" not in str(err.value) and "`hf-ext run pretrain`" in str(err.value)
    assert not out.exists()
