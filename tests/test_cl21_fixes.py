"""Audit cl21: the shared checks of the Trainer recipes (F2) and the notes on `--train_file` and `hf-ext run --help`.

F2: `--save_steps` / `--eval_steps` <= 0 (with their strategy `steps`) and `--dataloader_num_workers` < 0 passed every
recipe's checks. transformers reads a value below 1 as a fraction of the run, so a negative (or 0) one never saved
or evaluated during training, silently (`--save_steps -3 --max_steps 12` left only checkpoint-12); torch refused the
negative worker count only once the data and the model were built, naming no flag. A fraction in (0, 1) is
transformers' own reading and stays accepted.
"""

from __future__ import annotations

import importlib
import os

import pytest

from hf_ext.recipes import available_recipes

RECIPES = sorted(available_recipes())


def _args(tmp_path, **kwargs):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "o"), report_to="none", max_steps=12, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"save_strategy": "steps", "save_steps": -3}, r"^--save_steps must be a positive number .* got -3: with --save_strategy steps the run would never save a checkpoint"),
        ({"save_strategy": "steps", "save_steps": -0.5}, r"^--save_steps must be a positive number .* got -0.5"),
        ({"save_strategy": "steps", "save_steps": 0}, r"^--save_steps must be a positive number .* got 0:"),
        ({"eval_strategy": "steps", "eval_steps": -3}, r"^--eval_steps must be a positive number .* never evaluate"),
        ({"dataloader_num_workers": -1}, r"^--dataloader_num_workers must be >= 0 .* got -1\."),
        ({"save_strategy": "steps", "save_total_limit": 0}, r"^--save_total_limit must be >= 1 .* no limit"),
    ],
)  # fmt: skip
def test_shared_check_refuses_values_the_run_would_silently_misread(tmp_path, kwargs, match):
    from hf_ext.recipes._common import validate_training_arguments

    with pytest.raises(ValueError, match=match):
        validate_training_arguments(_args(tmp_path, **kwargs))


def test_non_finite_steps_set_after_parsing_are_refused(tmp_path):
    from hf_ext.recipes._common import validate_training_arguments

    args = _args(tmp_path, save_strategy="steps", save_steps=5)
    args.save_steps = float("nan")
    with pytest.raises(ValueError, match="--save_steps must be a positive number .* got nan"):
        validate_training_arguments(args)


@pytest.mark.parametrize("value", [0.25, 0.5, 1, 3])
def test_fractions_of_the_run_and_whole_steps_stay_accepted(tmp_path, value):
    from hf_ext.recipes._common import validate_training_arguments

    validate_training_arguments(_args(tmp_path, save_strategy="steps", save_steps=value))
    validate_training_arguments(_args(tmp_path, eval_strategy="steps", eval_steps=value))
    validate_training_arguments(_args(tmp_path, dataloader_num_workers=0, save_strategy="steps", save_total_limit=1))


def _main(name):
    return importlib.import_module(f"hf_ext.recipes.{name}").main


def _has(name, flag):
    from tests.test_recipes_common import help_text

    return f"{flag} " in help_text(name)


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "federated"])  # federated refuses the strategies
def test_every_trainer_recipe_refuses_them_before_any_work(name, tmp_path):
    cases = [
        (["--save_strategy", "steps", "--save_steps", "-3"], "--save_steps must be a positive number"),
        (["--eval_strategy", "steps", "--eval_steps", "-3"], "--eval_steps must be a positive number"),
        (["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be >= 0"),
    ]
    tried = 0
    for i, (argv, match) in enumerate(cases):
        if not _has(name, argv[-2]):
            continue
        tried += 1
        out = tmp_path / f"o{i}"
        with pytest.raises(ValueError, match=match):
            _main(name)([*argv, "--output_dir", str(out)])
        assert not out.exists(), f"{name} {argv}: output written before the arguments were checked"
    assert tried == 3 or name in ("compliance", "cubic_newton"), name


_TINY_PRETRAIN = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1",
                  "--num_attention_heads", "2", "--block_size", "32", "--per_device_train_batch_size", "4",
                  "--max_eval_blocks", "4", "--max_new_tokens", "2", "--model_type", "llama", "--fp8_backend", "none",
                  "--vocab_size", "300", "--disable_tqdm", "true", "--report_to", "none"]  # fmt: skip


def test_a_fraction_of_the_run_checkpoints_as_transformers_reads_it(tmp_path):
    """`--save_steps 0.5 --max_steps 4`: a checkpoint every 2 steps (ceil(4 * 0.5)), accepted as before."""
    from hf_ext.recipes.pretrain import main

    out = tmp_path / "out"
    main([*_TINY_PRETRAIN, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "0.5",
          "--output_dir", str(out)])  # fmt: skip
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-4"]


# Note (b): an existing folder as --train_file was refused with "does not exist".
@pytest.mark.parametrize("name, flag", [("pretrain", "--train_file"), ("pretrain", "--validation_file"),
                                        ("warmup", "--train_file"), ("grape", "--train_file")])  # fmt: skip
def test_a_folder_as_train_file_is_called_a_folder(name, flag, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    out = tmp_path / "o"
    with pytest.raises(ValueError) as refused:
        _main(name)([flag, str(folder), "--output_dir", str(out)])
    text = str(refused.value)
    assert text.startswith(f"{flag}={str(folder)!r} is a folder, not a file; pass one local .txt/"), text
    assert "does not exist" not in text
    # the recipes with --dataset_name say where a folder of data files goes; warmup has no such flag
    assert ("given with --dataset_name" in text) == _has(name, "--dataset_name"), text
    assert not out.exists()


def test_a_missing_file_is_still_missing(tmp_path):
    from hf_ext.recipes._common import check_text_file

    with pytest.raises(ValueError, match="does not exist; pass a local"):
        check_text_file(str(tmp_path / "nope.txt"), "--train_file")


# Note (c): `hf-ext run --help` exited 2 with "needs a recipe name first".
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_run_help_prints_the_usage_and_the_recipes(flag, capsys):
    from hf_ext.cli import main

    assert main(["run", flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-ext run <recipe> [recipe args...]")
    assert "`hf-ext run <recipe> --help` lists them" in out
    listed = [line.split()[0] for line in out.split("recipes:\n", 1)[1].splitlines() if line.strip()]
    assert listed == RECIPES


def test_run_without_a_recipe_is_still_a_usage_error(capsys):
    from hf_ext.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--output_dir", "x"])
    assert exc.value.code == 2
    assert "needs a recipe name first" in capsys.readouterr().err
