"""GRAPE: bad mixture settings fail early, before anything is written.

* A recipe resume with other trajectory settings (step sizes, clip, batch split, ...) than the checkpoint's used to be
  refused only inside `trainer.train()`, after the tokenizer and data work and after `grape_run.json` had been written
  into --output_dir; it is now refused in `validate_args` (the trainer keeps its own check for direct users).
* `GrapeConfig(domain_column="")` passed the config and was refused only when the trainer was built; an empty
  `text_column` likewise (None stays accepted: a tokenized dataset needs no text column).
"""

from __future__ import annotations

import pytest

TINY = ["--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
        "--block_size", "32", "--per_device_train_batch_size", "4", "--reweight_batch_size", "4",
        "--reweight_mini_batch_size", "2", "--reweight_domains_every", "1", "--reweight_tasks_every", "1",
        "--source_domains", "text,numeric,networking,filesystem", "--disable_tqdm", "true", "--use_cpu", "true",
        "--logging_steps", "1", "--seed", "3"]  # fmt: skip
CKPT = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1"]


@pytest.fixture(scope="module")
def grape_checkpoint(tmp_path_factory):
    from hf_ext.recipes.grape import main

    out = tmp_path_factory.mktemp("grape")
    main([*TINY, *CKPT, "--output_dir", str(out)])
    return out / "checkpoint-1"


@pytest.mark.parametrize(
    "extra, change",
    [
        (["--domain_step_size", "3"], r"domain_step_size=20\.0 -> 3\.0"),
        (["--per_device_train_batch_size", "2"], "per_device_train_batch_size=4 -> 2"),
        (["--data_seed", "7"], "data_seed=None -> 7"),
    ],
)
def test_resume_with_other_mixture_settings_is_refused_before_any_work(tmp_path, grape_checkpoint, extra, change):
    from hf_ext.recipes.grape import main

    out = tmp_path / "resumed"
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint='.*checkpoint-1' was written by a run with other "
                       r"mixture settings: " + change):  # fmt: skip
        main([*TINY, *CKPT, *extra, "--output_dir", str(out), "--resume_from_checkpoint", str(grape_checkpoint)])
    assert not out.exists()  # before: grape_run.json written, tokenizer and data built, then the trainer refused


def test_resume_with_the_same_settings_still_passes_the_early_check(grape_checkpoint):
    from hf_ext.grape.trainer import check_resume_options
    from hf_ext.recipes.grape import GrapeRecipeConfig

    args = GrapeRecipeConfig(output_dir=str(grape_checkpoint.parent), per_device_train_batch_size=4,
                             reweight_batch_size=4, reweight_mini_batch_size=2, reweight_domains_every=1,
                             reweight_tasks_every=1, block_size=32, use_cpu=True, seed=3)  # fmt: skip
    check_resume_options(str(grape_checkpoint), args)  # nothing changed: no refusal
    args.task_step_size = 2.0
    with pytest.raises(ValueError, match=r"^resume_from_checkpoint=.*task_step_size=\S+ -> 2\.0"):
        check_resume_options(str(grape_checkpoint), args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"domain_column": ""}, "domain_column must name the training dataset's domain column"),
        ({"domain_column": None}, "domain_column must name"),
        ({"text_column": ""}, "text_column must name the raw-text column"),
    ],
)
def test_empty_column_names_are_refused_by_the_config(tmp_path, kwargs, match):
    from hf_ext.grape import GrapeConfig

    with pytest.raises(ValueError, match=match):
        GrapeConfig(output_dir=str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_recipe_refuses_an_empty_domain_column_at_parsing(tmp_path):
    from hf_ext.recipes.grape import main

    with pytest.raises(ValueError, match="domain_column must name"):
        main([*TINY, *CKPT, "--domain_column", "", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_text_column_none_is_still_accepted():
    from hf_ext.grape import GrapeConfig

    assert GrapeConfig(output_dir="out", text_column=None).text_column is None
