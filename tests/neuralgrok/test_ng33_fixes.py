"""Audit ng33 fixes."""

import os
import shutil

import pytest

from hf_ext.recipes.neuralgrok import main

_FLAGS = [
    "--p", "11", "--max_steps", "4", "--use_cpu", "--disable_tqdm", "True", "--seeds", "0", "--hidden_size", "16",
    "--num_attention_heads", "2", "--num_hidden_layers", "1", "--outer_fraction", "0.2", "--outer_every", "2",
    "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--logging_steps", "2", "--save_strategy", "steps",
    "--save_steps", "2", "--amplifier_hidden_dims", "4",
]  # fmt: skip


def test_recipe_refuses_a_resume_with_another_outer_gradient_before_any_run_trains(tmp_path):
    # (ng33 F1) --outer_gradient was not among the options every checkpoint is checked against before any work: the
    # `none` run resumed and trained to its end, then the neuralgrok run's train() refused the checkpoint with a
    # message naming neither the flag nor the checkpoint
    out = str(tmp_path / "out")
    flags = [*_FLAGS, "--methods", "none,neuralgrok", "--output_dir", out]
    main(flags, plots=False)
    for method in ("none", "neuralgrok"):  # interrupted after step 2
        shutil.rmtree(os.path.join(out, f"{method}-seed0", "checkpoint-4"))
    with pytest.raises(ValueError, match="--outer_gradient recompute, but this command gives next_step"):
        main([*flags, "--outer_gradient", "next_step", "--resume_from_checkpoint"], plots=False)
    assert sorted(os.listdir(os.path.join(out, "none-seed0"))) == ["checkpoint-2", "neuralgrok_run.json"]
    # the same --outer_gradient resumes both runs
    main([*flags, "--resume_from_checkpoint"], plots=False)
    assert os.path.isdir(os.path.join(out, "neuralgrok-seed0", "checkpoint-4"))
