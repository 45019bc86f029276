"""Pass-42 cross-system journeys (xj52): a checkpoint of one recipe's run resumed by another recipe."""

from __future__ import annotations

import json
import logging
import os

import pytest

from hf_ext.recipes._common import check_run_record


def _finished_run(folder, record_name: str, step: int = 2) -> str:
    """A run folder holding the record `record_name` of the recipe that wrote it and a complete `checkpoint-<step>`
    (what the resume checks read before any work); returns the checkpoint's path."""
    os.makedirs(folder / f"checkpoint-{step}")
    (folder / record_name).write_text(json.dumps({"seed": 42}))
    (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return str(folder / f"checkpoint-{step}")


def test_pretrain_refuses_a_checkpoint_of_a_grape_run_by_name(tmp_path):
    """`hf-ext run pretrain --resume_from_checkpoint <grape run>/checkpoint-2` resumed it with only the warning that
    the run "started before hf_ext recorded" its flags (grape_run.json beside it was not looked at): with the
    schedule flags matched, it trained 2 pretrain steps on GRAPE's 2 (the mixture state dropped, another data order)
    and reported the mix as one pretrain run."""
    from hf_ext.recipes.pretrain import main

    checkpoint = _finished_run(tmp_path / "grape_out", "grape_run.json")
    argv = ["--model_type", "llama", "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
            "--max_steps", "4", "--fp8_backend", "none", "--fp8_monitor_steps", "0", "--report_to", "none",
            "--output_dir", str(tmp_path / "pretrain_out"), "--resume_from_checkpoint", checkpoint]  # fmt: skip
    with pytest.raises(
        ValueError, match=r"checkpoint is of a `grape` run .*not of a `pretrain` run.*hf-ext run grape"
    ):
        main(argv)


def test_warmup_refuses_a_checkpoint_of_a_pretrain_run_by_name(tmp_path):
    from hf_ext.recipes.warmup import main

    checkpoint = _finished_run(tmp_path / "pretrain_out", "pretrain_run.json")
    argv = ["--arms", "lion_ar_warmup", "--output_dir", str(tmp_path / "warmup_out"), "--resume_from_checkpoint",
            checkpoint]  # fmt: skip
    with pytest.raises(ValueError, match=r"checkpoint is of a `pretrain` run .*not of a `warmup` run"):
        main(argv)


@pytest.mark.parametrize(
    "own, other, recipe",
    [
        ("pretrain_run.json", "grape_run.json", "grape"),
        ("grape_run.json", "pretrain_run.json", "pretrain"),
        ("layer_parallel_run.json", "neuralgrok_run.json", "neuralgrok"),
        ("warmup_run.json", "metadata_run_data.json", "metadata_pretrain"),
        ("neuralgrok_run.json", "hyperinf_run_data.json", "hyperinf"),
    ],
)
def test_check_run_record_names_the_recipe_whose_run_it_is(tmp_path, own, other, recipe):
    (tmp_path / other).write_text("{}")
    with pytest.raises(ValueError, match=rf"checkpoint is of a `{recipe}` run .*{other}"):
        check_run_record(str(tmp_path), own, {"seed": 0}, "the data")


def test_a_run_without_any_record_or_with_its_own_still_resumes(tmp_path, caplog):
    """A run started before records were written (no record at all) resumes with the warning, as before; a folder
    holding this recipe's record is checked against it, whatever else it holds."""
    from hf_ext.recipes._common import refuse_run_of_another_recipe

    with caplog.at_level(logging.WARNING):
        check_run_record(str(tmp_path), "pretrain_run.json", {"seed": 0}, "the data")
    assert "started before hf_ext recorded it" in caplog.text
    (tmp_path / "pretrain_run.json").write_text(json.dumps({"seed": 0}))
    (tmp_path / "grape_run.json").write_text("{}")
    refuse_run_of_another_recipe(str(tmp_path), "pretrain_run.json")
    check_run_record(str(tmp_path), "pretrain_run.json", {"seed": 0}, "the data")


def _saved_run(folder, record_name: str) -> str:
    """A finished run's --output_dir: its record and its saved model's files."""
    os.makedirs(folder)
    (folder / record_name).write_text(json.dumps({"seed": 42}))
    (folder / "config.json").write_text("{}")
    return str(folder)


FRESH_RUNS = {
    "pretrain": ["--model_type", "llama", "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads",
                 "2", "--max_steps", "2", "--fp8_backend", "none", "--fp8_monitor_steps", "0", "--report_to", "none"],
    "grape": ["--max_steps", "2", "--report_to", "none"],
    "layer_parallel": ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
                       "--pretrain_steps", "1", "--report_to", "none"],
    "metadata_pretrain": ["--max_steps", "2", "--report_to", "none"],
}  # fmt: skip


@pytest.mark.parametrize(
    "recipe, other_record, other",
    [
        ("grape", "pretrain_run.json", "pretrain"),
        ("pretrain", "grape_run.json", "grape"),
        ("layer_parallel", "pretrain_run.json", "pretrain"),
        ("metadata_pretrain", "pretrain_run.json", "pretrain"),
    ],
)
def test_a_fresh_run_into_another_recipes_output_dir_is_refused_by_name(tmp_path, recipe, other_record, other):
    """`hf-ext run grape --output_dir <finished pretrain run>` replaced the pretrain run's model with GRAPE's and left
    pretrain_results.json (the old model's eval loss) and pretrain_run.json beside it, without a word."""
    import importlib

    folder = _saved_run(tmp_path / "finished", other_record)
    main = importlib.import_module(f"hf_ext.recipes.{recipe}").main
    with pytest.raises(ValueError, match=rf"holds a `{other}` run \(its record {other_record}\).*`{recipe}` run"):
        main([*FRESH_RUNS[recipe], "--output_dir", folder])
    assert sorted(os.listdir(folder)) == sorted([other_record, "config.json"])
