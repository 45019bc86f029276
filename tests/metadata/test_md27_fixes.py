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

