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


@pytest.mark.parametrize(
    "args, match",
    [
        (["--methods", "tracin,datainf", "--schulz_iterations", "3", "--schulz_init", "identity",
          "--lissa_iterations", "2"],
         r"--methods tracin,datainf would ignore --schulz_iterations \(read only by hyperinf\); --schulz_init \(read "
         r"only by hyperinf\); --lissa_iterations \(read only by lissa\): drop them"),  # fmt: skip
        # hyperinf_reference fixes its own settings (identity init, 30 iterations): was run with 30 whatever the flag
        (["--methods", "hyperinf_reference", "--schulz_iterations", "3"], r"would ignore --schulz_iterations \(read"),
        (["--methods", "tracin", "--damping_scale", "0.2"], r"would ignore --damping_scale \(read only by hyperinf, "),
    ],
)
def test_method_flags_no_selected_method_reads_are_refused_before_any_output(tmp_path, args, match):
    """Each of these ran the whole recipe before and ignored the flag (docs: a flag the run would ignore is refused)."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(TINY + ["--output_dir", str(out)] + args)
    assert not out.exists()


def test_method_flags_are_accepted_where_a_selected_method_reads_them(tmp_path):
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.hyperinf import (
        HyperInfTrainingArguments,
        InfluenceArguments,
        ModelArguments,
        TaskArguments,
        validate_args,
    )

    argv = TINY + ["--output_dir", str(tmp_path / "out"), "--methods", "hyperinf,lissa,tracin", "--schulz_iterations",
                   "3", "--schulz_init", "identity", "--lissa_iterations", "2", "--damping_scale", "0.2"]  # fmt: skip
    validate_args(*parse_recipe_args((TaskArguments, ModelArguments, InfluenceArguments, HyperInfTrainingArguments), argv))


def test_vocab_size_beside_a_base_folder_with_a_tokenizer_is_refused(tmp_path, small_tokenizer):
    """The base folder's tokenizer is used (`load_tokenizer`), so --vocab_size was silently ignored while the sibling
    tiny-base flags were refused. A base folder without a tokenizer is still tokenized with the --vocab_size BPE."""
    from transformers import HfArgumentParser

    from hf_ext.recipes import hyperinf

    with_tok, without_tok = tmp_path / "with_tok", tmp_path / "without_tok"
    for base in (with_tok, without_tok):
        base.mkdir()
        (base / "config.json").write_text("{}")
    small_tokenizer.save_pretrained(with_tok)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--vocab_size sizes the tokenizer built on the fly, but the tokenizer of "
                       r"--model_name_or_path='.*with_tok' is loaded, so it would be ignored; drop --vocab_size"):
        main(["--model_name_or_path", str(with_tok), "--vocab_size", "9999", "--output_dir", str(out)])
    assert not out.exists()
    parser = HfArgumentParser(
        (hyperinf.TaskArguments, hyperinf.ModelArguments, hyperinf.InfluenceArguments, hyperinf.HyperInfTrainingArguments)
    )
    args = parser.parse_args_into_dataclasses(
        ["--model_name_or_path", str(without_tok), "--vocab_size", "300", "--output_dir", str(tmp_path / "ok")]
    )
    hyperinf.validate_args(*args)  # accepted: the --vocab_size BPE tokenizes this base's data
    assert len(hyperinf.load_tokenizer(str(without_tok), args[0].vocab_size)) == 300
