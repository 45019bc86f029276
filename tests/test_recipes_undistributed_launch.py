"""A recipe launched on several processes that the Trainer would not train data-parallel is refused before any work
(md27 F1, extended to every Trainer recipe): `torchrun --nproc_per_node N` on a machine without an accelerator and
without `--use_cpu true` leaves accelerate's distributed type at NO, so each rank trained the whole run alone, on the
whole data, into the same folders. The accepted case (`--use_cpu true`, gloo ranks) is covered by the recipes' real
two-rank launches."""

import importlib

import pytest

import hf_ext.recipes._common as common

RECIPES = ["pretrain", "grape", "layer_parallel", "neuralgrok", "warmup", "metadata_pretrain"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_multi_process_launch_without_data_parallelism_is_refused_before_any_output(recipe, tmp_path, monkeypatch):
    module = importlib.import_module(f"hf_ext.recipes.{recipe}")
    out = tmp_path / "never"
    monkeypatch.setattr(common, "launched_processes", lambda: 2)  # what WORLD_SIZE=2 (torchrun) gives every rank
    with pytest.raises(ValueError, match=rf"The {recipe} recipe was launched on 2 processes.*--use_cpu true"):
        module.main(["--output_dir", str(out), "--max_steps", "1"])  # a mutant that trains stops soon
    assert not out.exists()
