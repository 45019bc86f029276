"""Audit cl21, F1: the federated recipe refuses, by name and before any work, the Trainer flags it does not honour.

`--eval_strategy steps` passed the checks; the run then removed the earlier results.json, built the data and failed in
transformers (the pretrain stage's Trainer has no eval_dataset). With `--pretrain_steps 0`, `--save_strategy steps
--save_steps 1 --eval_strategy steps` ran to the end and wrote no checkpoint: every client's Trainer is forced to
save and evaluate "no" (`client_training_args`), and the recipe cannot resume from a checkpoint anyway.
"""

import json
import os

import pytest

from hf_ext.recipes.federated import FederatedTrainingArguments, main

from .conftest import tiny_recipe_args

_EVAL = "the recipe evaluates the model itself after every round"
_SAVE = "the recipe cannot resume .* its Trainers do not checkpoint"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--pretrain_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1"], "--eval_strategy steps would be ignored: " + _EVAL),
        (["--eval_strategy=epoch"], "--eval_strategy epoch would be ignored: " + _EVAL),
        (["--eval_steps", "3"], "--eval_steps 3 would be ignored: " + _EVAL),
        (["--save_strategy", "steps", "--save_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1"], "--save_strategy steps would be ignored: " + _SAVE),
        (["--save_strategy", "epoch"], "--save_strategy epoch would be ignored: " + _SAVE),
        (["--save_steps", "2"], "--save_steps 2 would be ignored: " + _SAVE),
        (["--save_total_limit", "1"], "--save_total_limit 1 would be ignored: " + _SAVE),
    ],
)  # fmt: skip
def test_unhonoured_trainer_flags_are_refused_before_the_earlier_results_go(tmp_path, extra, match):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"earlier": "run"}))
    argv = ["--output_dir", str(out), "--configs", "lora", *tiny_recipe_args(pretrain_steps=None), *extra]
    with pytest.raises(ValueError, match=match):
        main(argv)
    assert sorted(os.listdir(out)) == ["results.json"]  # was: removed, then a transformers error (or rc 0, no ckpt)
    assert json.loads((out / "results.json").read_text()) == {"earlier": "run"}


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"eval_strategy": "steps", "eval_steps": 1}, "--eval_strategy steps"),
        ({"save_strategy": "steps", "save_steps": 1}, "--save_strategy steps"),
        ({"save_total_limit": 2}, "--save_total_limit 2"),
    ],
)
def test_parsed_arguments_are_checked_too(tmp_path, changes, flag):
    """`run` called with parsed arguments (or an abbreviated flag that argparse completes) meets the same refusal."""
    from hf_ext.recipes.federated import refuse_not_honoured

    args = FederatedTrainingArguments(output_dir=str(tmp_path), **changes)
    with pytest.raises(ValueError, match=f"^{flag} would be ignored"):
        refuse_not_honoured(args)


def test_strategy_no_is_accepted(tmp_path):
    """`--eval_strategy no` / `--save_strategy no` are what the recipe does: given explicitly, the run goes on."""
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), "--configs", "lora", *tiny_recipe_args(), "--eval_strategy", "no",
            "--save_strategy=no"]  # fmt: skip
    results = main(argv)
    assert list(results["runs"]) == ["lora"] and (out / "results.json").is_file()
    assert not [d for _, dirs, _ in os.walk(out) for d in dirs if d.startswith("checkpoint-")]
