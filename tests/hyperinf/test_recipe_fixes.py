"""hyperinf recipe: a --noise_rate that rounds to no (or every) flipped label, and checkpoints of another run in
--output_dir, refused before any training."""

import json

import pytest

TINY = ["--pretrain_steps", "2", "--hidden_size", "32", "--num_attention_heads", "2", "--max_train", "40",
        "--num_val", "10", "--num_test", "10", "--num_train_epochs", "1", "--methods", "tracin", "--num_threads", "1",
        "--vocab_size", "300", "--disable_tqdm", "true"]  # fmt: skip
# with --max_steps, which sets the run's length (--num_train_epochs would be ignored, and is refused)
_EPOCHS = TINY.index("--num_train_epochs")
TINY_STEPS = TINY[:_EPOCHS] + TINY[_EPOCHS + 2 :]


def _interrupted_run(tmp_path, step: int):
    """An --output_dir as an interrupted run leaves it: the pretrained base and a checkpoint at `step`."""
    out = tmp_path / "out"
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (out / "base").mkdir()
    (out / "base" / "config.json").write_text("{}")
    return out


def _parse(argv):
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.hyperinf import HyperInfTrainingArguments, InfluenceArguments, ModelArguments, TaskArguments

    return parse_recipe_args((TaskArguments, ModelArguments, InfluenceArguments, HyperInfTrainingArguments), argv)


@pytest.mark.parametrize("rate, count", [(0.01, 0), (0.99, 40)])
def test_noise_rate_rounding_to_none_or_all_is_refused_before_training(tmp_path, rate, count):
    """Both used to pretrain and fine-tune, then crash with ZeroDivisionError (an empty flipped or clean subset)."""
    from hf_ext.recipes.hyperinf import run

    out = tmp_path / "out"
    parsed = _parse([*TINY, "--noise_rate", str(rate), "--output_dir", str(out)])
    with pytest.raises(ValueError, match=rf"--noise_rate {rate} of the 40 .*--max_train 40.* rounds to {count} "):
        run(*parsed)
    assert not (out / "base").exists()  # nothing was trained


def test_llm_selection_noise_rate_that_corrupts_no_answer_is_refused_before_training(tmp_path):
    """round(0.04 * 24) = 1 example is chosen, and one example has nobody to swap answers with: nothing was corrupted,
    and the run failed in roc_auc, naming no flag, after pretraining and both fine-tunes (base/, runs/clean_oracle)."""
    from hf_ext.recipes.hyperinf import run

    out = tmp_path / "out"
    argv = ["--task", "llm_selection", "--pretrain_steps", "2", "--hidden_size", "32", "--max_train", "24",
            "--num_val", "4", "--num_test", "8", "--prompt_tokens", "8", "--answer_tokens", "3", "--num_train_epochs",
            "1", "--methods", "tracin", "--select_fractions", "0.5", "--disable_tqdm", "true", "--num_threads", "1",
            "--noise_rate", "0.04", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(ValueError, match=r"--noise_rate 0.04 chooses 1 of the 24 .*corrupts no answer.*--max_train"):
        run(*_parse(argv))
    assert not (out / "base").exists() and not (out / "runs").exists()  # nothing was trained


def test_noisy_count():
    from hf_ext.recipes.hyperinf import noisy_count

    assert noisy_count(0.2, 40, 40) == 8
    assert noisy_count(0.03, 40, 320) == 1
    with pytest.raises(ValueError, match="--noise_rate 0.01 .*--max_train 320.*rounds to 0 corrupted answers"):
        noisy_count(0.01, 40, 320, "corrupted answers")


def test_fresh_run_over_checkpoints_and_resume_past_max_steps_are_refused(tmp_path):
    from hf_ext.recipes.hyperinf import validate_args

    out = _interrupted_run(tmp_path, 9)
    with pytest.raises(ValueError, match="checkpoint-9 exists.*earlier run"):
        validate_args(*_parse([*TINY, "--output_dir", str(out)]))
    with pytest.raises(ValueError, match="global_step 9.*--max_steps 6"):
        validate_args(*_parse([*TINY_STEPS, "--max_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint"]))


def test_a_run_stopped_after_its_last_checkpoint_is_restored_not_trained_past_max_steps(tmp_path):
    """A run killed after its checkpoint at --max_steps, before its scores were written, rerun with the bare flag:
    the fine-tuning is restored from that checkpoint (no step past --max_steps, which transformers' Trainer alone
    would take) and the scores equal the uninterrupted run's. It used to be refused ("= --max_steps")."""
    import shutil

    import numpy as np

    from hf_ext.recipes.hyperinf import RUN_DATA_FILE, main

    args = [*TINY_STEPS, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "3"]
    full_dir, stopped = tmp_path / "full", tmp_path / "stopped"
    full = main([*args, "--output_dir", str(full_dir)])
    for name in ("base", "checkpoint-3"):
        shutil.copytree(full_dir / name, stopped / name)
    shutil.copy(full_dir / RUN_DATA_FILE, stopped / RUN_DATA_FILE)
    restored = main([*args, "--output_dir", str(stopped), "--resume_from_checkpoint"])
    assert not (stopped / "checkpoint-4").exists()
    state = json.loads((stopped / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert restored["fine_tune"] == full["fine_tune"]
    np.testing.assert_array_equal(restored["scores"]["tracin"], full["scores"]["tracin"])


def test_resume_with_other_data_defining_arguments_is_refused(tmp_path):
    """A resume with another --seed used to continue the fine-tuning on another label-noise draw (rc 0, flipped
    examples [7, 8, 19, ...] became [0, 8, 11, ...]): the results matched neither seed."""
    from hf_ext.recipes.hyperinf import RUN_DATA_FILE, validate_args

    out = _interrupted_run(tmp_path, 2)
    parsed = _parse([*TINY, "--seed", "3", "--output_dir", str(out)])
    saved = {"seed": 3, "task": parsed[0].task, "noise_rate": parsed[0].noise_rate}
    (out / RUN_DATA_FILE).write_text(json.dumps(saved))
    validate_args(*_parse([*TINY_STEPS, "--seed", "3", "--max_steps", "6", "--output_dir", str(out),
                           "--resume_from_checkpoint"]))  # fmt: skip
    with pytest.raises(ValueError, match=r"--seed 4 \(the interrupted run used 3\)"):
        validate_args(*_parse([*TINY_STEPS, "--seed", "4", "--max_steps", "6", "--output_dir", str(out),
                               "--resume_from_checkpoint"]))  # fmt: skip
    saved["domains"] = "devtools,networking"  # every task flag is recorded
    (out / RUN_DATA_FILE).write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"--domains 'devtools,filesystem' \(the interrupted run used"):
        validate_args(*_parse([*TINY_STEPS, "--seed", "3", "--domains", "devtools,filesystem", "--max_steps", "6",
                               "--output_dir", str(out), "--resume_from_checkpoint"]))  # fmt: skip
