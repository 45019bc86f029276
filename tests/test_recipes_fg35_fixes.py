"""Audit fg35: recipe flags transformers accepts unchecked."""

import pytest

from hf_ext.recipes._common import parse_recipe_args
from hf_ext.recipes.pretrain import DataArguments, ModelArguments, PretrainTrainingArguments

TYPES = (ModelArguments, DataArguments, PretrainTrainingArguments)


@pytest.mark.parametrize("value", ["2", "1.0", "-0.1", "nan"])
def test_label_smoothing_factor_outside_zero_one_is_refused_naming_the_flag(value, tmp_path):
    """`--label_smoothing_factor 2` trained the model away from its labels: transformers' LabelSmoother weighs the
    target's log-likelihood by 1 - factor (here -1) and never checks the range. Refused with the other shared checks,
    before any work (every recipe parses its arguments this way)."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--label_smoothing_factor must be in \[0, 1\)"):
        parse_recipe_args(TYPES, ["--label_smoothing_factor", value, "--output_dir", str(out)])
    assert not out.exists()


def test_label_smoothing_factor_in_range_is_accepted(tmp_path):
    *_, args = parse_recipe_args(TYPES, ["--label_smoothing_factor", "0.1", "--output_dir", str(tmp_path / "o")])
    assert args.label_smoothing_factor == 0.1


def test_pretrain_results_record_the_evaluations_made_during_training(tmp_path):
    """`--eval_strategy steps` evaluated the model every `--eval_steps` steps, but pretrain_results.json kept only the
    training losses: without --report_to the evaluation curve was printed and lost."""
    import json

    from hf_ext.recipes.pretrain import main

    from .test_pretrain import FOG_TINY

    out = tmp_path / "run"
    argv = [*FOG_TINY, "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1", "--output_dir", str(out)]
    metrics = main(argv)
    saved = json.loads((out / "pretrain_results.json").read_text())
    assert [step for step, _ in saved["eval_loss_curve"]] == [1, 2]
    assert saved["eval_loss_curve"] == [list(row) for row in metrics["eval_loss_curve"]]
    assert all(loss > 0 for _, loss in saved["eval_loss_curve"])
