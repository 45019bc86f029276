"""Recipes: the logic behind `hf-ext run <name>`, `python -m hf_ext.recipes.<name>` and `scripts/<name>.py`, one
module per recipe.

A recipe module has a one-line module docstring (shown by `hf-ext list`) and `main(argv: list[str] | None = None)`.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path


def available_recipes() -> dict[str, str]:
    """Map recipe name -> one-line description, read without importing the recipe modules."""
    out = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        out[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def run_recipe(name: str, argv: list[str] | None = None):
    """Run recipe `name` with command-line arguments `argv`."""
    recipes = available_recipes()
    if name not in recipes:
        raise ValueError(f"Unknown recipe {name!r}; choose one of {sorted(recipes)} (see `hf-ext list`).")
    module = importlib.import_module(f".{name}", __name__)
    from ._common import CLI_PROG

    token = CLI_PROG.set(f"hf-ext run {name}")  # the usage line (`--help`, argument errors) names the real command
    try:
        return module.main(argv)
    finally:
        CLI_PROG.reset(token)
