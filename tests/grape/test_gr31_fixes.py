"""gr31 fixes: an output name that is an existing folder of output_dir (F1; names that look like folders, `weights/`,
`.`, `a/..`, are refused by GrapeConfig: tests/grape/test_rv31_fixes.py), the recipe's run record as an output name
(F2), a reweighting period no step of the run reaches (F3), a compared method's own mixture file as --mixture_file
(F4)."""

from __future__ import annotations

import logging

import pytest
from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeTrainer


def test_an_output_name_of_an_existing_folder_is_refused_by_the_trainer(tmp_path):
    # replacing a folder failed with IsADirectoryError at the end of training (the mixture export runs inside
    # train(), before the model is saved)
    (tmp_path / "checkpoint-1").mkdir()
    train, targets = synthetic_mixture()
    args = quick_grape_args(tmp_path, export_mixture_file="checkpoint-1")
    with pytest.raises(ValueError, match="export_mixture_file='checkpoint-1' is a folder in output_dir"):
        GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)


def test_the_recipes_run_record_is_refused_as_an_output_name(tmp_path):
    # F2: the mixture export overwrote grape_run.json, and a resume with other data flags was then only warned about
    from grape_synthetic import parse_grape_recipe

    from hf_ext.recipes.grape import validate_args

    parsed = parse_grape_recipe(["--output_dir", str(tmp_path), "--export_mixture_file", "grape_run.json"])
    with pytest.raises(ValueError, match="--export_mixture_file 'grape_run.json' names a file the recipe writes"):
        validate_args(*parsed)


def test_a_period_no_step_of_the_run_reaches_is_warned_about(tmp_path, caplog):
    # F3: the default period of 100 in a shorter run trained on the initial weights and exported them as "grape"
    # silently
    train, targets = synthetic_mixture()
    args = quick_grape_args(tmp_path, max_steps=2, reweight_domains_every=5, reweight_tasks_every=2, plot_file=None)
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    with caplog.at_level(logging.WARNING, logger="hf_ext.grape.trainer"):
        trainer.train()
    warned = [r.getMessage() for r in caplog.records if "never updates" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("reweight_domains_every=5 but this run ends at step 2"), warned
    assert trainer.mixture_state.domain_updates == 0 and trainer.mixture_state.task_updates == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_ext.grape.trainer"):
        trainer._warn_if_never_reweighted(3, 5)  # a resume at step 3 of 5 still reaches the update at step 5
    assert not [r for r in caplog.records if "never updates" in r.getMessage()]


def test_a_compared_methods_own_mixture_file_read_by_a_later_method_is_refused(tmp_path):
    # F4: grape rewrote <output_dir>/grape/mixture.json before fixed (trained after it) read it: fixed trained on this
    # comparison's grape mixture, not on the given file's weights
    import json

    from grape_synthetic import parse_grape_recipe

    from hf_ext.data import corpus_domains
    from hf_ext.recipes.grape import validate_args

    (tmp_path / "grape").mkdir()
    mixture = tmp_path / "grape" / "mixture.json"
    mixture.write_text(json.dumps(dict.fromkeys(corpus_domains(), 1.0)))
    argv = ["--output_dir", str(tmp_path), "--mixture_file", str(mixture), "--compare_methods"]
    with pytest.raises(ValueError, match="is the mixture file this comparison's grape run writes, and fixed"):
        validate_args(*parse_grape_recipe([*argv, "grape,fixed"]))
    validate_args(*parse_grape_recipe([*argv, "fixed,grape"]))  # read before grape rewrites it
