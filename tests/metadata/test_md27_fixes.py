"""Audit md27 fixes to the metadata recipe."""

import pytest

from hf_ext.recipes._common import parse_recipe_args
from hf_ext.recipes.metadata_pretrain import (
    MetadataArguments,
    MetadataDataArguments,
    MetadataModelArguments,
    MetadataTrainingArguments,
    run,
)

from .test_recipe import TINY

TYPES = (MetadataModelArguments, MetadataDataArguments, MetadataArguments, MetadataTrainingArguments)


def test_a_launch_on_several_processes_that_would_not_train_data_parallel_is_refused(tmp_path, monkeypatch):
    """F1: `torchrun --nproc_per_node 2` on a machine without an accelerator and without --use_cpu true: accelerate
    sets up no data parallelism, so each rank trained the whole run alone (the same results as one process) into the
    same folders, while metadata_results.json recorded world_size 2."""
    out = tmp_path / "never"
    parsed = parse_recipe_args(TYPES, [*TINY, "--max_steps", "2", "--output_dir", str(out)], resume="keep")
    assert parsed[3].parallel_mode.value == "not_parallel"
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets for every rank
    with pytest.raises(ValueError, match=r"launched on 2 processes.*pass --use_cpu true"):
        run(*parsed)
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--template", "column", "--template_column", ""], "--template column"),
        (["--template", "url", "--template_column", "a,b"], "--template_column 'a,b'"),
        (["--template", "topic_format", "--template_column", "topic"], "--template_column 'topic'"),
        (["--template", "format"], "--template_format"),
        (["--template", "format", "--template_format", "{url"], "--template_format '{url'"),
    ],
)
def test_a_template_that_cannot_be_built_is_refused_naming_the_flags(tmp_path, extra, flag):
    """F2: the refusal named metadata_template's parameters (kind='column' needs column=..., fmt=...), not the flags."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--template") as info:
        run(*parse_recipe_args(TYPES, [*TINY, "--max_steps", "2", "--output_dir", str(out), *extra], resume="keep"))
    assert flag in str(info.value) and "--template_column" in str(info.value)
    assert not out.exists()


def test_dataloader_workers_with_a_cooldown_are_refused_before_any_output(tmp_path):
    """F3: MetadataCooldownCallback refused them when training began, after metadata_run_data.json and the
    url_conditioned/ folder were written (and the data loaded)."""
    out = tmp_path / "never"
    argv = [*TINY, "--max_steps", "2", "--output_dir", str(out), "--dataloader_num_workers", "1"]
    with pytest.raises(ValueError, match=r"--dataloader_num_workers 1 cannot be used with --cooldown_fraction 0\.1"):
        run(*parse_recipe_args(TYPES, argv, resume="keep"))
    assert not out.exists()


def test_a_trainer_evaluation_strategy_is_refused_before_any_output(tmp_path):
    """F4: the recipe gives the Trainer no eval_dataset, so the Trainer refused --eval_strategy steps when it was built,
    after metadata_run_data.json was written (and an earlier run's results in the folder removed)."""
    out = tmp_path / "never"
    argv = [*TINY, "--max_steps", "2", "--output_dir", str(out), "--eval_strategy", "steps", "--eval_steps", "1"]
    with pytest.raises(ValueError, match=r"--eval_strategy steps: .*--doc_eval_steps"):
        run(*parse_recipe_args(TYPES, argv, resume="keep"))
    assert not out.exists()
