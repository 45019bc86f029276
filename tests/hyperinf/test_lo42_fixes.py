"""HyperINF recipe: `--select_fractions` lists each share once.

`--task llm_selection --select_fractions 0.2,0.2` (or `0.2,0.20`) fine-tuned every method's 20% subset, and the random
one, twice (the same subsets, the same `select_<name>_0.2` run names) and reported each row twice. It is now refused
before any work, naming the flag and the repeated share, as a repeated `--methods` entry is.
"""

import pytest

from hf_ext.recipes.hyperinf import main


@pytest.mark.parametrize(
    "fractions, repeated",
    [("0.2,0.2", "0.2"), ("0.2,0.5,0.20", "0.2"), ("0.5,0.25,0.5,0.25", "0.25, 0.5")],
)
def test_repeated_select_fractions_are_refused_before_any_output(tmp_path, fractions, repeated):
    out = tmp_path / "never"
    with pytest.raises(
        ValueError, match=rf"--select_fractions lists {repeated} more than once .*list each share once"
    ):
        main(["--task", "llm_selection", "--select_fractions", fractions, "--output_dir", str(out)])
    assert not out.exists()


def test_distinct_select_fractions_pass_validation(tmp_path):
    from hf_ext.recipes.hyperinf import HyperInfTrainingArguments as Args
    from hf_ext.recipes.hyperinf import InfluenceArguments, ModelArguments, TaskArguments, validate_args

    out = tmp_path / "out"
    validate_args(TaskArguments(task="llm_selection"), ModelArguments(), InfluenceArguments(select_fractions="0.5,0.2"),
                  Args(output_dir=str(out)))  # fmt: skip
