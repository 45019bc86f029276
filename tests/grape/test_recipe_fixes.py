"""GRAPE recipe: duplicate target-task names, and checkpoints of another run in --output_dir (fresh rerun / resume
past --max_steps), all refused before any work."""

import json

import pytest

TINY = ["--vocab_size", "300", "--per_device_train_batch_size", "4", "--hidden_size", "32", "--intermediate_size",
        "64", "--num_attention_heads", "2", "--reweight_domains_every", "2", "--reweight_tasks_every", "2"]  # fmt: skip


def _parse(argv):
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.grape import (
        GrapeDataArguments,
        GrapeEvalArguments,
        GrapeModelArguments,
        GrapeRecipeConfig,
    )

    return parse_recipe_args((GrapeDataArguments, GrapeModelArguments, GrapeRecipeConfig, GrapeEvalArguments), argv)


def _checkpoint(folder, step):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


@pytest.mark.parametrize(
    "flag, value",
    [("--target_domains", "a=networking,a=filesystem"), ("--target_files", "qa=qa.jsonl,qa=code.txt")],
)
def test_parse_pairs_refuses_a_task_named_twice(flag, value):
    """The second task used to replace the first silently (a dict keyed by name)."""
    from hf_ext.recipes.grape import _parse_pairs

    with pytest.raises(ValueError, match=f"{flag} names the target task 'q?a' twice"):
        _parse_pairs(value, flag)


def test_duplicate_target_domains_refused_by_validation(tmp_path):
    from hf_ext.recipes.grape import validate_args

    parsed = _parse([*TINY, "--target_domains", "a=networking,a=filesystem", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--target_domains names the target task 'a' twice"):
        validate_args(*parsed)


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path):
    """A fresh rerun used to keep the earlier run's checkpoint-N folders; a later bare --resume_from_checkpoint then
    continued that other run."""
    from hf_ext.recipes.grape import validate_args

    out = tmp_path / "out"
    _checkpoint(out / "checkpoint-8", 8)
    parsed = _parse([*TINY, "--max_steps", "6", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="checkpoint-8 exists.*--resume_from_checkpoint.*another --output_dir"):
        validate_args(*parsed)
    cmp_out = tmp_path / "cmp"  # --compare_methods: each method's folder
    _checkpoint(cmp_out / "uniform" / "checkpoint-2", 2)
    parsed = _parse([*TINY, "--compare_methods", "grape,uniform", "--output_dir", str(cmp_out)])
    with pytest.raises(ValueError, match="uniform.checkpoint-2 exists"):
        validate_args(*parsed)


def test_resume_past_max_steps_is_refused(tmp_path):
    """The audit's case: the newest checkpoint in --output_dir is another run's step 9, this run's --max_steps is 6
    (it used to resume and end at global_step 9)."""
    from hf_ext.recipes.grape import validate_args

    out = tmp_path / "out"
    _checkpoint(out / "checkpoint-3", 3)
    _checkpoint(out / "checkpoint-9", 9)
    parsed = _parse([*TINY, "--max_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint"])
    with pytest.raises(ValueError, match="global_step 9.*--max_steps 6"):
        validate_args(*parsed)
    parsed = _parse([*TINY, "--max_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint",
                     str(out / "checkpoint-3")])  # fmt: skip
    validate_args(*parsed)  # a checkpoint of this run is fine


def test_resume_of_a_finished_run_is_accepted(tmp_path):
    """A checkpoint at --max_steps is this run's, finished (stopped before its results were written): the recipe
    restores it (tests/test_recipes_resume.py) rather than refusing it."""
    from hf_ext.recipes.grape import validate_args

    out = tmp_path / "out"
    _checkpoint(out / "checkpoint-6", 6)
    validate_args(*_parse([*TINY, "--max_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint"]))
    validate_args(*_parse([*TINY, "--max_steps", "7", "--output_dir", str(out), "--resume_from_checkpoint"]))
