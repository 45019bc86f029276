"""Warmup and cubic Newton recipes: flags no selected arm/method/problem reads are refused by name; warmup refuses a
--block_size longer than a split and checkpoints of another run, all before any work."""

import json

import pytest


def _warmup(argv):
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments

    return parse_recipe_args((WarmupRecipeArguments, WarmupTrainingArguments), argv, resume="keep")


def _checkpoint(folder, step):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


# ------------------------------------------------------------------------------------------------ warmup
@pytest.mark.parametrize(
    "arms, extra, flag",
    [
        ("adamw_no_warmup", ["--lion_lr_ratio", "0.5"], "--lion_lr_ratio"),
        ("adamw_no_warmup", ["--lion_beta1", "0.5"], "--lion_beta1"),
        ("adamw_no_warmup,adamw_warmup", ["--lion_beta2", "0.5"], "--lion_beta2"),
        ("adamw_no_warmup", ["--nesterov", "false"], "--nesterov"),
        ("lion_a_no_warmup", ["--rotation_angle", "0.01"], "--rotation_angle"),
        ("lion_a_no_warmup,adamw_warmup", ["--zero_mean", "false"], "--zero_mean"),
        ("lion_ar_no_warmup", ["--adam_epsilon", "1e-6"], "--adam_epsilon"),
        ("lion_ar_no_warmup", ["--rotation_angle", "0.01", "--adam_beta2", "0.9"], "--adam_beta2"),
        ("lion_a_warmup", ["--adam_beta1", "0.8"], "--adam_beta1"),
        ("lion_ar_warmup,adamw_warmup", ["--sgd_momentum", "0.5"], "--sgd_momentum"),
        ("adamw_no_warmup,lion_ar_no_warmup", ["--warmup_fraction", "0.1"], "--warmup_fraction"),
    ],
)
def test_warmup_refuses_flags_no_arm_reads(tmp_path, arms, extra, flag):
    """Each was accepted silently (the arms share one argument set and get the other optimizers' options reset)."""
    from hf_ext.recipes.warmup import validate

    out = tmp_path / "out"
    recipe, args = _warmup(["--arms", arms, "--output_dir", str(out), *extra])
    with pytest.raises(ValueError, match=f"would ignore {flag} "):
        validate(recipe, args)
    assert not out.exists()


@pytest.mark.parametrize(
    "arms, extra",
    [
        ("lion_a_no_warmup", ["--lion_lr_ratio", "0.5", "--lion_beta1", "0.5", "--nesterov", "false"]),
        ("lion_ar_no_warmup", ["--adam_beta1", "0.8", "--zero_mean", "false"]),  # beta1 sets the rotation angle
        ("lion_ar_no_warmup", ["--rotation_angle", "0.01", "--update_norm_decay", "0.5"]),
        ("adamw_warmup", ["--adam_epsilon", "1e-6", "--adam_beta1", "0.8", "--warmup_fraction", "0.1"]),
    ],
)
def test_warmup_accepts_flags_a_selected_arm_reads(tmp_path, arms, extra):
    from hf_ext.recipes.warmup import validate

    recipe, args = _warmup(["--arms", arms, "--max_steps", "20", "--output_dir", str(tmp_path), *extra])
    assert validate(recipe, args) == [arms]


def test_warmup_block_size_longer_than_a_split_is_refused_before_any_write(tmp_path):
    """It used to fail with KeyError 'input_ids' (an empty held-out split) after clearing the earlier results."""
    from hf_ext.recipes.warmup import run

    out = tmp_path / "out"
    out.mkdir()
    (out / "warmup_results.json").write_text("{}")  # an earlier run's results stay where nothing ran
    recipe, args = _warmup(["--arms", "adamw_no_warmup", "--hidden_size", "32", "--intermediate_size", "64",
                            "--num_attention_heads", "2", "--vocab_size", "300", "--max_steps", "2",
                            "--block_size", "100000", "--output_dir", str(out)])  # fmt: skip
    with pytest.raises(ValueError, match="--block_size 100000"):
        run(recipe, args)
    assert sorted(p.name for p in out.iterdir()) == ["warmup_results.json"]


def test_warmup_fresh_run_over_checkpoints_and_resume_past_max_steps_are_refused(tmp_path):
    from hf_ext.recipes.warmup import validate

    out = tmp_path / "out"
    _checkpoint(out / "adamw_no_warmup" / "checkpoint-8", 8)
    recipe, args = _warmup(["--arms", "adamw_no_warmup", "--max_steps", "6", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="checkpoint-8 exists.*earlier run"):
        validate(recipe, args)
    for value in (["--resume_from_checkpoint"], ["--resume_from_checkpoint", str(out / "adamw_no_warmup" /
                                                                                "checkpoint-8")]):  # fmt: skip
        recipe, args = _warmup(["--arms", "adamw_no_warmup", "--max_steps", "6", "--output_dir", str(out), *value])
        with pytest.raises(ValueError, match="global_step 8.*--max_steps 6"):
            validate(recipe, args)


# ------------------------------------------------------------------------------------------------ cubic Newton
_CUBIC = ["--batch_sizes", "1", "--oracle_budget", "8", "--n_samples", "50", "--n_features", "14",
          "--eval_points", "2"]  # fmt: skip


@pytest.mark.parametrize(
    "problems, methods, extra",
    [
        ("logistic", "sgd", ["--adam_lr", "0.5"]),
        ("logistic", "sgd", ["--cubic_M", "5"]),
        ("logistic", "sgd,cn", ["--alpha", "0.9"]),
        ("logistic", "sgd,adam,cn", ["--momentum_type", "ema"]),
        ("logistic", "sgd,adam,cn", ["--beta", "0.1"]),
        ("logistic", "cn,cn_momentum", ["--krylov_dim", "3"]),  # the logistic problem solves exactly
        ("corpus", "sgd", ["--krylov_dim", "3"]),
        ("logistic", "sgd", ["--corpus_vocab", "999"]),
        ("logistic", "sgd", ["--corpus_hidden", "64"]),
        ("logistic", "sgd", ["--corpus_oracle_budget", "7"]),
        ("corpus", "sgd", ["--regularizer", "0.1"]),
        ("corpus", "sgd", ["--n_samples", "60"]),
        ("logistic", "adam", ["--sgd_lr", "0.5"]),
    ],
)
def test_cubic_refuses_flags_no_selected_method_or_problem_reads(tmp_path, problems, methods, extra):
    """The audit's case (--problems logistic --methods sgd with eight unused flags) ran to the end silently."""
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.cubic_newton import CubicNewtonRecipeArguments, validate

    argv = list(_CUBIC)
    if problems == "corpus":  # the logistic-only flags of _CUBIC left at their defaults
        argv = ["--batch_sizes", "1", "--corpus_oracle_budget", "8", "--eval_points", "2"]
    out = tmp_path / "out"
    (args,) = parse_recipe_args(
        (CubicNewtonRecipeArguments,),
        [*argv, "--problems", problems, "--methods", methods, *extra, "--output_dir", str(out)],
    )
    with pytest.raises(ValueError, match=f"would ignore {extra[0]} "):
        validate(args)
    assert not out.exists()


def test_cubic_accepts_flags_a_selected_method_reads(tmp_path):
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.cubic_newton import CubicNewtonRecipeArguments, validate

    argv = [*_CUBIC, "--problems", "logistic", "--methods", "sgd,adam,cn_momentum", "--adam_lr", "0.5", "--cubic_M",
            "5", "--alpha", "0.9", "--momentum_type", "ema", "--output_dir", str(tmp_path)]  # fmt: skip
    (args,) = parse_recipe_args((CubicNewtonRecipeArguments,), argv)
    assert validate(args)[1] == ["sgd", "adam", "cn_momentum"]


def test_warmup_resume_restores_a_finished_arm_without_a_step_past_max_steps(tmp_path):
    """Interrupted after the first arm finished (its newest checkpoint at --max_steps) and during the second: the rerun
    with --resume_from_checkpoint equals the uninterrupted run, writes no checkpoint-7 for the finished arm (before,
    transformers trained a 7th step, the arm's loss curve got a 7th entry, and a second resume was refused because of
    that checkpoint), and can be resumed again."""
    import shutil

    from hf_ext.recipes.warmup import main

    argv = ["--arms", "adamw_warmup,lion_ar_no_warmup", "--hidden_size", "32", "--intermediate_size", "64",
            "--num_attention_heads", "2", "--vocab_size", "512", "--block_size", "16", "--max_eval_blocks", "4",
            "--per_device_train_batch_size", "2", "--metrics_every", "2", "--disable_tqdm", "true", "--max_steps", "6",
            "--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "1", "--seed", "3"]  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "out"
    full = main([*argv, "--output_dir", str(ref)])
    shutil.copytree(ref / "adamw_warmup", out / "adamw_warmup")  # finished: checkpoint-3, checkpoint-6
    shutil.copytree(ref / "lion_ar_no_warmup" / "checkpoint-3", out / "lion_ar_no_warmup" / "checkpoint-3")
    for _ in range(2):  # the second rerun: as after a second interruption
        resumed = main([*argv, "--output_dir", str(out), "--resume_from_checkpoint"])
        assert sorted(p.name for p in (out / "adamw_warmup").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
        for arm in ("adamw_warmup", "lion_ar_no_warmup"):
            for key in ("eval_loss", "train_loss", "update_metrics"):
                assert resumed[arm][key] == full[arm][key], (arm, key)
