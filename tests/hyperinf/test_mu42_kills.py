"""mu42: the repeated --select_fractions check through `validate_args` alone (the recipe-level test of pass 36 runs the
whole llm_selection recipe when the check is missing, which makes its mutants too slow to kill)."""

import pytest


@pytest.mark.parametrize(("fractions", "repeated"), [("0.2,0.2", "0.2"), ("0.1,0.3,0.1,0.1", "0.1")])
def test_validate_args_refuses_a_share_listed_twice(tmp_path, fractions, repeated):
    from hf_ext.recipes.hyperinf import HyperInfTrainingArguments as Args
    from hf_ext.recipes.hyperinf import InfluenceArguments, ModelArguments, TaskArguments, validate_args

    with pytest.raises(ValueError, match=rf"--select_fractions lists {repeated} more than once"):
        validate_args(TaskArguments(task="llm_selection"), ModelArguments(),
                      InfluenceArguments(select_fractions=fractions), Args(output_dir=str(tmp_path / "out")))  # fmt: skip
