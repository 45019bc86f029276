"""Recipe audit (2026-12-01): flags that the chosen task (or a given base model) would ignore are refused up front."""

import pytest

from hf_ext.recipes.hyperinf import main

TINY = [
    "--pretrain_steps", "2", "--hidden_size", "32", "--max_train", "24", "--num_val", "4", "--num_test", "8",
    "--num_train_epochs", "1", "--methods", "tracin", "--disable_tqdm", "true", "--num_threads", "1",
]  # fmt: skip


@pytest.mark.parametrize(
    "args, match",
    [
        (["--select_fractions", "0.3"], "--select_fractions only apply to --task llm_selection"),
        (["--instruction_kinds", "continue"], "--instruction_kinds only apply to --task llm_selection"),
        (["--prompt_tokens", "4", "--answer_tokens", "2"], "--prompt_tokens, --answer_tokens only apply"),
        (["--task", "llm_selection", "--select_fraction", "0.3"], "--select_fraction only applies to --task class"),
        (["--model_name_or_path", "BASE"], "--hidden_size, --pretrain_steps describe the tiny base model"),
        # failed in Trainer's constructor after the base model was pretrained and saved to <output_dir>/base
        (["--eval_strategy", "steps", "--eval_steps", "1"], "--eval_strategy steps needs an eval_dataset"),
        # a checkpoint of another folder, but no base model to resume with: was refused only after --output_dir
        # had been created (empty)
        (["--resume_from_checkpoint", "CKPT"], "has no pretrained base model"),
    ],
)
def test_flags_that_cannot_apply_are_refused_before_any_output(tmp_path, args, match):
    """Each of these ran the whole recipe before (pretraining, fine-tuning, scoring, retraining) and ignored the flag."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    ckpt = tmp_path / "elsewhere" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(
            TINY + ["--output_dir", str(out)] + [a.replace("BASE", str(base)).replace("CKPT", str(ckpt)) for a in args]
        )
    assert not out.exists()


def test_an_interrupted_rerun_into_the_same_folder_leaves_no_result_file_of_the_earlier_run(tmp_path, monkeypatch):
    """Was: a rerun into the folder of a finished run, stopped before its end, left the finished run's results beside
    the new run's base model, looking current."""
    import hf_ext.recipes.hyperinf as recipe

    out = tmp_path / "out"
    main(TINY + ["--output_dir", str(out)])
    assert (out / "hyperinf_results.json").is_file() and (out / "detection_curves.png").is_file()
    (out / "my_notes.txt").write_text("kept")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "fine_tune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(TINY + ["--output_dir", str(out), "--seed", "7"])
    names = {p.name for p in out.iterdir()}
    assert not names & {"hyperinf_results.json", "hyperinf_scores.json", "detection_curves.png", "selection_loss.png"}
    assert (out / "my_notes.txt").read_text() == "kept"


def test_a_method_named_twice_is_refused_before_any_output(tmp_path):
    """Was: `--methods hyperinf,hyperinf` scored and retrained twice under one name (the second overwrote the first)."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--methods names \['tracin'\] more than once"):
        main(TINY + ["--output_dir", str(out), "--methods", "tracin,datainf,tracin"])
    assert not out.exists()
