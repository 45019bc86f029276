"""`hf-ext` command line: list recipes and run them."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from . import __version__
    from .recipes import available_recipes, run_recipe

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="hf-ext", description="HuggingFace-native tools for ten EPFL research systems."
    )
    parser.add_argument("--version", action="version", version=f"hf_ext {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", help="list the recipes with one line each")
    run = sub.add_parser("run", help="run a recipe: hf-ext run <recipe> [recipe args...]", add_help=False)
    run.add_argument("recipe", nargs="?")
    if not argv:
        parser.print_help()
        return 0
    if argv[0] == "run":
        if len(argv) < 2 or argv[1].startswith("-"):
            names = ", ".join(sorted(available_recipes()))
            parser.error(f"`hf-ext run` needs a recipe name first; one of: {names}")
        try:
            run_recipe(argv[1], argv[2:])
        except ValueError as err:
            if argv[1] not in available_recipes():
                parser.error(str(err))
            raise
        return 0
    args = parser.parse_args(argv)
    if args.command == "list":
        recipes = available_recipes()
        width = max(len(n) for n in recipes)
        for name, desc in recipes.items():
            print(f"{name.ljust(width)}  {desc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
