"""Recipes without `--resume_from_checkpoint` (compliance, cubic_newton) report the flag as the user typed it.

A bare `--resume_from_checkpoint` is rewritten to `--resume_from_checkpoint=last` for the recipes that resume (as
transformers' example scripts read it); the two recipes that have no such flag were given the rewrite too, so their
refusal named `['--resume_from_checkpoint=last']`, a value the user never typed. The rewrite now applies only where
the flag exists.
"""

import re

import pytest


@pytest.mark.parametrize("recipe", ["compliance", "cubic_newton"])
@pytest.mark.parametrize(
    "typed",
    [
        ["--resume_from_checkpoint"],
        ["--resume-from-checkpoint"],
        ["--resume_from_checkpoint", "ckpt"],
    ],
)
def test_unsupported_resume_flag_is_reported_as_typed(tmp_path, recipe, typed):
    import importlib

    main = importlib.import_module(f"hf_ext.recipes.{recipe}").main
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=re.escape(f"not used by the HfArgumentParser: {typed!r}")):
        main(["--output_dir", str(out), *typed])
    assert not out.exists()


def test_recipes_with_the_flag_still_read_a_bare_one_as_last():
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.pretrain import DataArguments, ModelArguments, PretrainTrainingArguments

    *_, args = parse_recipe_args(
        (ModelArguments, DataArguments, PretrainTrainingArguments),
        ["--output_dir", "o", "--resume_from_checkpoint"],
        resume="keep",
    )
    assert args.resume_from_checkpoint == "last"
