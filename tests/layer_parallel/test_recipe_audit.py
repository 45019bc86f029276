"""The layer_parallel recipe's fine-tuning flags: `--eval_strategy` evaluates (it failed after the sweep was written),
a resumed run records the whole run's training loss, and `--resume_from_checkpoint` is refused early when nothing
would resume or the checkpoint holds another pairing (it failed late with a state-dict error, or was ignored)."""

import json
import shutil

import pytest

from hf_ext.recipes.layer_parallel import main


@pytest.fixture(scope="module")
def source(tmp_path_factory, recipe_tiny):
    out = tmp_path_factory.mktemp("lp_audit") / "src"
    main([*recipe_tiny, "--output_dir", str(out), "--pretrain_steps", "2", "--skip_sweep", "--lp_start", "0", "--lp_end",
          "2", "--finetune", "false"])  # fmt: skip
    return str(out / "source")


@pytest.fixture(scope="module")
def full(source, tmp_path_factory, recipe_loaded):
    """4 fine-tuning steps with checkpoints every 2."""
    out = tmp_path_factory.mktemp("lp_audit_full")
    results = main(_args(recipe_loaded, source, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--output_dir",
                         str(out)))  # fmt: skip
    return results, out / "checkpoint-2"


def _args(recipe_loaded, source, *extra):
    return [*recipe_loaded, "--model_name_or_path", source, "--skip_sweep", "--lp_start", "0", "--lp_end", "4",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--logging_steps", "1", *extra]  # fmt: skip


def test_eval_strategy_steps_evaluates_during_finetuning(source, tmp_path, recipe_loaded):
    out = tmp_path / "out"
    res = main(_args(recipe_loaded, source, "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1", "--output_dir",
                     str(out)))  # fmt: skip
    curve = res["finetune_eval_loss_curve"]
    assert [step for step, _ in curve] == [1, 2]
    # the last evaluation is of the fine-tuned model on the same eval blocks (equal-length blocks: same mean)
    assert curve[-1][1] == pytest.approx(res["finetuned_eval"]["loss"], rel=1e-5)
    assert json.loads((out / "results.json").read_text())["finetune_eval_loss_curve"] == [list(p) for p in curve]


def test_resume_from_a_moved_checkpoint_records_the_whole_runs_train_loss(source, full, tmp_path, recipe_loaded):
    full, checkpoint = full
    moved = tmp_path / "elsewhere" / "checkpoint-2"
    shutil.copytree(checkpoint, moved)
    resumed = main(_args(recipe_loaded, source, "--max_steps", "4", "--output_dir", str(tmp_path / "resumed"),
                         "--resume_from_checkpoint", str(moved)))  # fmt: skip
    assert resumed["finetune_loss_curve"] == full["finetune_loss_curve"]
    # was: the mean over steps 3-4 only (Trainer's training_loss of the resumed process)
    assert resumed["finetune_train_loss"] == pytest.approx(full["finetune_train_loss"], rel=1e-6)
    assert resumed["finetune_resumed_at_step"] == 2
    assert resumed["finetuned_eval"] == full["finetuned_eval"]


def test_a_resume_between_two_logs_reports_the_uninterrupted_curve_and_train_loss(
    source, full, tmp_path, recipe_loaded, repo_root
):
    """Audit lc13 #3 / cn14 #3: with a checkpoint saved between two logs (step 3, logs every 2 steps) the weights end
    the same, but the step-4 entry was Trainer's mean since the resume (step 4 alone), not over steps 3-4, and
    `finetune_train_loss` was null. The fine-tuning Trainer now saves and restores its loss window
    (`LossWindowResumeMixin`): the resumed run reports the uninterrupted run's curve and train loss. `full` logged
    every step (the same training: logging and saving draw no random numbers), which gives each step's loss."""
    per_step = dict(full[0]["finetune_loss_curve"])
    every2 = ["--max_steps", "4", "--logging_steps", "2", "--save_strategy", "steps", "--save_steps", "3"]
    first = main(_args(recipe_loaded, source, *every2, "--output_dir", str(tmp_path / "first")))
    moved = tmp_path / "elsewhere" / "checkpoint-3"
    shutil.copytree(tmp_path / "first" / "checkpoint-3", moved)
    resumed = main(_args(recipe_loaded, source, *every2, "--output_dir", str(tmp_path / "resumed"),
                         "--resume_from_checkpoint", str(moved)))  # fmt: skip
    assert resumed["finetuned_eval"] == first["finetuned_eval"] == full[0]["finetuned_eval"]  # same weights
    (s2, before), (s4, uninterrupted) = first["finetune_loss_curve"]
    assert (s2, s4) == (2, 4)
    assert before == pytest.approx((per_step[1] + per_step[2]) / 2, rel=1e-5)
    assert uninterrupted == pytest.approx((per_step[3] + per_step[4]) / 2, rel=1e-5)
    assert resumed["finetune_resumed_at_step"] == 3
    assert [tuple(entry) for entry in resumed["finetune_loss_curve"]] == [(2, before), (4, uninterrupted)]
    assert resumed["finetune_train_loss"] == pytest.approx(first["finetune_train_loss"], rel=1e-6)
    with open(f"{repo_root}/docs/layer_parallel.md", encoding="utf-8") as fh:
        text = " ".join(fh.read().split())
    assert "otherwise the first entry after the resume averages only the steps since the resume" not in text
    assert "the same for a resumed run, also from a checkpoint saved between two logs" in text


def test_a_run_stopped_after_its_last_checkpoint_is_restored_not_trained_past_max_steps(
    source, full, tmp_path, recipe_loaded
):
    """A fine-tuning killed after its checkpoint at --max_steps, before the model and results were written: resumed
    from it, the run is restored (no 5th step, which transformers' Trainer alone would take) and finishes as the
    uninterrupted run did. It used to be refused ("= --max_steps")."""
    full, checkpoint = full
    out = tmp_path / "stopped"
    shutil.copytree(checkpoint.parent / "checkpoint-4", out / "checkpoint-4")
    restored = main(_args(recipe_loaded, source, "--max_steps", "4", "--output_dir", str(out),
                          "--resume_from_checkpoint"))  # fmt: skip
    assert not (out / "checkpoint-5").exists()
    assert restored["finetune_loss_curve"] == full["finetune_loss_curve"]
    assert restored["finetune_train_loss"] == pytest.approx(full["finetune_train_loss"], rel=1e-6)
    assert restored["finetuned_eval"] == full["finetuned_eval"] and restored["reloaded_eval"] == full["reloaded_eval"]


def test_resume_is_refused_early_when_it_cannot_apply(source, full, tmp_path, recipe_loaded):
    ckpt = str(full[1])
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--finetune"):  # was: accepted and silently ignored
        main(_args(recipe_loaded, source, "--finetune", "false", "--output_dir", str(out), "--resume_from_checkpoint", ckpt))
    base = [*recipe_loaded, "--model_name_or_path", source, "--per_device_train_batch_size", "4", "--max_steps", "3",
            "--output_dir", str(out), "--resume_from_checkpoint", ckpt]  # fmt: skip
    with pytest.raises(ValueError, match="lp_start=0 there, 1 here"):  # was: RuntimeError loading the state dict
        main([*base, "--skip_sweep", "--lp_start", "1", "--lp_end", "3"])
    with pytest.raises(ValueError, match="lp_mode='sublayer' there, 'block' here"):
        main([*base, "--skip_sweep", "--lp_start", "0", "--lp_end", "4", "--lp_mode", "block"])
    assert not out.exists()
    # a range chosen by the sweep is checked before the sweep's files are written (one pair: never [0, 4))
    with pytest.raises(ValueError, match="another pairing"):
        main([*base, "--pair_counts", "1", "--max_ppl_increase", "100"])
    assert not (out / "sweep.json").exists()


def test_fresh_finetuning_in_a_folder_with_checkpoints_is_refused(source, full, recipe_loaded):
    """Was accepted: the new run's checkpoints mixed with the earlier run's, and a later bare --resume_from_checkpoint
    continued from the earlier run's newest checkpoint (checkpoint-6 of a 6-step run, for a 4-step run)."""
    out = full[1].parent
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="checkpoint-4 exists.*--resume_from_checkpoint"):
        main(_args(recipe_loaded, source, "--max_steps", "2", "--output_dir", str(out)))
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("impl", ["not_a_kernel", "flash_attention_2"])  # unknown; kernel package not installed here
def test_bad_attn_implementation_is_refused_before_writing(tmp_path, impl, recipe_tiny):
    """Was: transformers' error after the corpus was tokenised and --output_dir was created."""
    import importlib.util

    if impl == "flash_attention_2" and importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=f"--attn_implementation '{impl}'"):
        main([*recipe_tiny, "--output_dir", str(out), "--attn_implementation", impl])
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--save_strategy", "--eval_strategy"])
def test_finetuning_flags_are_refused_without_finetuning(tmp_path, flag, recipe_tiny):
    """Were accepted and did nothing with --finetune false."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=f"{flag} steps applies to the fine-tuning"):
        main([*recipe_tiny, "--output_dir", str(out), "--finetune", "false", flag, "steps"])
    assert not out.exists()


def test_a_fresh_rerun_into_the_same_folder_leaves_no_result_file_of_the_earlier_run(source, tmp_path, recipe_loaded):
    """Was: a rerun with --skip_sweep (or one interrupted before its end) left the earlier run's sweep.* / results.json
    beside its own files, each looking current."""
    out = tmp_path / "out"
    first = [*recipe_loaded, "--model_name_or_path", source, "--finetune", "false", "--output_dir", str(out)]
    main(first)
    assert {"sweep.json", "sweep.md", "sweep.png", "results.json"} <= {p.name for p in out.iterdir()}
    (out / "my_notes.txt").write_text("kept")
    main([*first, "--skip_sweep", "--lp_start", "0", "--lp_end", "4"])
    names = {p.name for p in out.iterdir()}
    assert not names & {"sweep.json", "sweep.md", "sweep.png", "summary.png"}
    saved = json.loads((out / "results.json").read_text())
    assert "sweep" not in saved
    assert (saved["lp_mode"], saved["lp_mlp_norm"]) == ("sublayer", "per_layer")  # lp_mlp_norm was not recorded
    assert (out / "my_notes.txt").read_text() == "kept"  # only the recipe's own report files are removed


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--MODEL", "--hidden_size", "48", "--num_attention_heads", "5"], "--hidden_size"),
        (["--MODEL", "--num_key_value_heads", "1"], "--num_key_value_heads"),
        (["--MODEL", "--pretrain_steps", "0"], "--pretrain_steps"),
        (["--MODEL", "--pretrain_learning_rate", "-1"], "--pretrain_learning_rate"),
        (["--MODEL", "--vocab_size", "100"], "--vocab_size"),
        (["--eval_limit", "0"], "--eval_limit"),
        (["--eval_fewshot", "-3"], "--eval_fewshot"),
        (["--eval_metric", "bogus"], "--eval_metric"),
        (["--skip_sweep", "--lp_start", "0", "--lp_end", "2", "--pair_counts", "99"], "--pair_counts"),
        (["--skip_sweep", "--lp_start", "0", "--lp_end", "2", "--sweep_stride", "7"], "--sweep_stride"),
        (["--skip_sweep", "--lp_start", "0", "--lp_end", "2", "--max_ppl_increase", "3"], "--max_ppl_increase"),
        (["--finetune", "false", "--learning_rate", "1"], "--learning_rate"),
        (["--finetune", "false", "--max_steps", "7"], "--max_steps"),
        (["--finetune", "false", "--warmup_steps", "3"], "--warmup_steps"),
        (["--finetune", "false", "--lr_scheduler_type", "linear"], "--lr_scheduler_type linear"),
        (["--finetune", "false", "--weight_decay", "0.1"], "--weight_decay"),
        (["--finetune", "false", "--logging_steps", "1"], "--logging_steps"),
        (["--MODEL", "--finetune", "false", "--per_device_train_batch_size", "3"], "--per_device_train_batch_size"),
    ],
)
def test_flags_the_run_would_ignore_are_refused_by_name(tmp_path, monkeypatch, recipe_loaded, extra, flag):
    """Were accepted and ignored (README: a flag the run would ignore is refused by name when set to anything but its
    default): the small Llama's flags with --model_name_or_path (even an invalid shape), lm-eval flags without
    --eval_tasks, sweep flags with --skip_sweep, fine-tuning flags with --finetune false."""
    from transformers import LlamaConfig

    from hf_ext.recipes import layer_parallel as recipe

    def no_pretraining(*args, **kwargs):
        raise AssertionError("the run went on to train the small Llama")

    monkeypatch.setattr(recipe, "_pretrain_small_llama", no_pretraining)
    model = tmp_path / "model"  # a config is enough: the refusal comes before any model is loaded
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2).save_pretrained(model)
    extra = [a for e in extra for a in (["--model_name_or_path", str(model)] if e == "--MODEL" else [e])]
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=f"^{flag} "):
        main([*recipe_loaded, "--output_dir", str(out), *extra])
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--block_size", "16"], r"--block_size 16 \(the interrupted run used 32\).*Resume with --block_size 32"),
        (["--max_eval_blocks", "4"], r"--max_eval_blocks 4 \(the interrupted run used 8\)"),
        (["--seed", "5"], r"--seed 5 \(the interrupted run used 42\)"),
    ],
)
def test_a_resume_with_other_data_or_source_is_refused_before_writing(source, full, tmp_path, recipe_loaded, argv, match):
    """The fine-tuning run's folder records the flags that define its source model and data (layer_parallel_run.json);
    a resume with other values is refused by flag name before any work. Another --block_size used to continue the
    checkpoint's fine-tuning on other blocks silently."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(_args(recipe_loaded, source, "--max_steps", "4", *argv, "--output_dir", str(out),
                   "--resume_from_checkpoint", str(full[1])))  # fmt: skip
    assert not out.exists()
    assert json.loads((full[1].parent / "layer_parallel_run.json").read_text())["block_size"] == 32


def test_another_runs_checkpoints_in_the_output_dir_are_refused_before_the_data_is_loaded(
    source, full, tmp_path, recipe_loaded, monkeypatch
):
    """rs22f: a checkpoint of one fine-tuning run resumed into an --output_dir holding another run's checkpoints was
    refused only when the run record was written, after the source model, the tokenizer and the data were loaded."""
    import hf_ext.data

    def loaded(*args, **kwargs):
        raise AssertionError("the data was loaded before the refusal")

    monkeypatch.setattr(hf_ext.data, "load_text_datasets", loaded)
    other = tmp_path / "other"
    shutil.copytree(full[1], other / "checkpoint-2")
    with pytest.raises(ValueError, match=r"which holds checkpoints of another run \(.*checkpoint-2\)"):
        main(_args(recipe_loaded, source, "--max_steps", "4", "--output_dir", str(other),
                   "--resume_from_checkpoint", str(full[1])))  # fmt: skip
