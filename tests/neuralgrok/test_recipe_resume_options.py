"""The neuralgrok recipe checks every checkpoint it is about to resume (also `--resume_from_checkpoint` with no value)
against the options each method trains with, with the trainer's own comparison (`resume_option_mismatches`): other
--meta_learning_rate / --amplifier_c / weight decay are refused before anything is written. It used to check only the
weight decay, and only of a checkpoint folder named on the command line."""

import os

import pytest

from hf_ext.recipes.neuralgrok import main

TINY = [
    "--p", "11", "--hidden_size", "32", "--per_device_train_batch_size", "16", "--outer_fraction", "0.2",
    "--disable_tqdm", "true", "--report_to", "none", "--seeds", "0", "--methods", "neuralgrok",
    "--outer_every", "1", "--amplifier_hidden_dims", "4", "--eval_strategy", "no", "--save_strategy", "steps",
    "--save_steps", "1",
]  # fmt: skip


def _snapshot(root):
    return {
        os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files
    }


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--meta_learning_rate", "0.05"], r"--meta_learning_rate 0.0001, but this command gives 0.05"),
        (["--amplifier_c", "0.5"], r"--amplifier_c 1.0, but this command gives 0.5"),
        (["--adam_epsilon", "0.001"], r"--adam_epsilon 1e-08, but this command gives 0.001"),
        (["--adam_beta2", "0.9"], r"--adam_beta2 0.98, but this command gives 0.9"),
        (["--weight_decay", "0.01"], r"weight decay 0.001, but --methods neuralgrok trains with 0.01 \(--weight_decay"),
    ],
)
def test_a_bare_resume_with_other_options_is_refused_before_writing(tmp_path, argv, match):
    out = tmp_path / "run"
    main(TINY + ["--max_steps", "1", "--output_dir", str(out)])
    before = _snapshot(out)
    with pytest.raises(ValueError, match=match):
        main(TINY + ["--max_steps", "2", "--output_dir", str(out), "--resume_from_checkpoint", *argv])
    assert _snapshot(out) == before  # results and checkpoints kept, nothing written
    named = tmp_path / "other"
    with pytest.raises(ValueError, match=match):
        main(TINY + ["--max_steps", "2", "--output_dir", str(named), *argv, "--resume_from_checkpoint",
                     str(out / "neuralgrok-seed0" / "checkpoint-1")])  # fmt: skip
    assert not named.exists()
