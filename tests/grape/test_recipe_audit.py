"""Recipe audit (2026-12-01): the uniform baseline stays uniform, and flags the run would ignore are refused up front."""

from __future__ import annotations

import json

import pytest
from grape_synthetic import without_reweighting

from hf_ext.recipes.grape import main

DOMAINS = ["text", "numeric", "networking", "filesystem"]
TINY = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--reweight_batch_size", "4",
    "--reweight_mini_batch_size", "2", "--reweight_domains_every", "1", "--reweight_tasks_every", "1",
    "--source_domains", ",".join(DOMAINS), "--disable_tqdm", "true", "--use_cpu", "true", "--max_steps", "1",
    "--report_to", "none",
]  # fmt: skip
SKEWED = {"text": 0.7, "numeric": 0.1, "networking": 0.1, "filesystem": 0.1}


def test_uniform_baseline_of_a_comparison_ignores_the_mixture_file(tmp_path, monkeypatch):
    """`--compare_methods uniform,fixed --mixture_file M` used to train the "uniform" baseline on M's weights too
    (its mixture.json held M's weights). The trainings are replaced by a recorder of what each method is given."""
    import hf_ext.recipes.grape as recipe

    given = {}

    def record(args, *rest):
        given[args.reweight_method] = args.mixture_file
        return {"method": args.reweight_method, "target_eval_loss": {}}

    monkeypatch.setattr(recipe, "_train_one", record)
    mixture = tmp_path / "skewed.json"
    mixture.write_text(json.dumps(SKEWED))
    out = tmp_path / "cmp"
    main(TINY + ["--output_dir", str(out), "--compare_methods", "uniform,fixed,grape", "--mixture_file", str(mixture)])
    assert given == {"uniform": None, "fixed": str(mixture), "grape": str(mixture)}


@pytest.mark.parametrize(
    "args, match",
    [
        (["--reweight_method", "uniform", "--mixture_file", "MIX"], "--reweight_method uniform with --mixture_file"),
        (["--mixture_key", "average"], "--mixture_key average selects weights of --mixture_file"),
        (["--reference_model_name_or_path", "REF"], "--reference_model_name_or_path is DoReMi's reference model"),
        (["--eval_limit", "5"], "--eval_limit applies to the lm-eval scoring of --eval_tasks"),
        (["--eval_num_fewshot", "2"], "--eval_num_fewshot applies to the lm-eval scoring of --eval_tasks"),
        (["--dataset_config_name", "en"], "--dataset_config_name is a config of --dataset_name"),
        (["--compare_methods", "grape,uniform", "--reweight_method", "doge"], "--reweight_method doge is not used"),
        (["--eval_strategy", "steps", "--eval_steps", "1"], "--eval_strategy steps needs an eval_dataset"),
        (["--target_files", "t=TGT", "--target_domains", "x=networking"], "--target_domains builds targets from the"),
        (["--tokenizer_name", "TOK"], "--vocab_size sizes the tokenizer built on the fly, but the tokenizer of"),
        (["--model_name_or_path", "REF"], "--hidden_size sizes a fresh model, but --model_name_or_path=.* is loaded"),
    ],
)
def test_flags_that_cannot_apply_are_refused_before_any_output(tmp_path, args, match):
    """Each of these ran to the end before, silently ignoring the flag (or, for uniform + --mixture_file, training a
    "uniform" model on the file's weights)."""
    (tmp_path / "mix.json").write_text(json.dumps(SKEWED))
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "config.json").write_text("{}")
    (tmp_path / "t.txt").write_text("target text " * 200 + "\n")
    args = [a.replace("MIX", str(tmp_path / "mix.json")).replace("REF", str(tmp_path / "ref")) for a in args]
    args = [a.replace("TGT", str(tmp_path / "t.txt")) for a in args]
    if "TOK" in args:  # a loaded tokenizer: TINY's --vocab_size 512 would be ignored
        from hf_ext.data import build_tokenizer

        build_tokenizer(300).save_pretrained(str(tmp_path / "tok"))
        args = [a.replace("TOK", str(tmp_path / "tok")) for a in args]
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(TINY + ["--output_dir", str(out)] + args)
    assert not out.exists()


def test_a_fresh_rerun_into_the_same_folder_leaves_no_result_file_of_the_earlier_run(tmp_path):
    """Was: after a comparison, a single-method rerun into the same folder (or one interrupted before its end) left the
    comparison's table and per-method results beside its own files, each looking current."""
    out = tmp_path / "out"
    main(TINY + ["--output_dir", str(out), "--compare_methods", "uniform,grape"])
    assert (out / "target_eval.md").is_file() and (out / "uniform" / "grape_results.json").is_file()
    (out / "my_notes.txt").write_text("kept")
    result = main(without_reweighting(TINY) + ["--output_dir", str(out), "--reweight_method", "uniform"])
    assert not (out / "target_eval.md").exists() and not (out / "target_eval.json").exists()
    assert not (out / "uniform" / "grape_results.json").exists() and not (out / "grape" / "mixture.json").exists()
    assert json.loads((out / "grape_results.json").read_text())["method"] == result["method"] == "uniform"
    assert (out / "uniform" / "config.json").is_file()  # a saved model is never removed, only report files
    assert (out / "my_notes.txt").read_text() == "kept"


@pytest.mark.parametrize(
    "args, match",
    [
        (["--reweight_method", "doremi"], "--reweight_method doremi needs a reference model: pass "
                                          "--reference_model_name_or_path"),
        (["--reweight_method", "fixed"], "--reweight_method fixed needs --mixture_file"),
        (["--reweight_method", "doremi", "--reference_model_name_or_path", "NOWHERE"],
         "--reference_model_name_or_path=.*nowhere.* is not a model folder"),
    ],
)  # fmt: skip
def test_a_run_refused_for_its_reference_or_mixture_leaves_the_earlier_results(tmp_path, args, match):
    """Audit 2026-12-04: these were refused only by GrapeTrainer, after the tokenizer and the data work, when the
    earlier run's grape_results.json, mixture.json and mixture_weights.png had already been deleted (a missing
    reference folder failed with a bare hub OSError naming no flag)."""
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"grape_results.json": "{}", "mixture.json": "{}", "mixture_weights.png": "png"}
    for name, text in earlier.items():
        (out / name).write_text(text)
    args = [a.replace("NOWHERE", str(tmp_path / "nowhere")) for a in args]
    with pytest.raises((ValueError, OSError)) as refused:
        main(without_reweighting(TINY) + ["--output_dir", str(out)] + args)
    assert {p.name: p.read_text() for p in out.iterdir()} == earlier
    assert refused.type is ValueError and refused.match(match)
