"""hyperinf recipe: the flags that build the model are recorded and checked on resume, and bad ones refused up front.

* A resume used to accept changed `ModelArguments`: `--lora_alpha 64` or `--use_rslora false` continued the
  fine-tuning at another LoRA scaling without a word (val loss 0.709 became 0.673, AUC 0.566 became 0.715),
  `--hidden_size` / `--pretrain_steps` were silently ignored (the saved base is reused), and another
  `--target_modules` failed only inside `Trainer` ("loaded state dict contains a parameter group that doesn't match").
* A `--target_modules` typo, `--lora_alpha 0` / `nan` and `--pretrain_learning_rate nan` passed `validate_args`: the
  run deleted the earlier run's results (and pretrained `base/` again) before failing in peft, the estimator or the
  optimizer with an error naming no flag.
"""

import json
import logging
import re

import pytest

from .test_recipe_fixes import TINY, TINY_STEPS, _interrupted_run, _parse

_EARLIER = ["hyperinf_results.json", "hyperinf_scores.json", "hyperinf_run_data.json", "detection_curves.png"]


def _plant(out, names):
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).write_text(f"{name} of an earlier, finished run")


def _unchanged(out, names):
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert (out / name).read_text() == f"{name} of an earlier, finished run"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--target_modules", "q_prj"], r"^--target_modules 'q_prj' selects no module LoRA can adapt in the base "
         r"model \(the tiny Llama pretrained here; peft: No modules were targeted.*named .*q_proj, k_proj, v_proj"),
        (["--target_modules", "self_attn"], r"^--target_modules 'self_attn' selects a LlamaAttention module of the "
         r"base model \(the tiny Llama pretrained here\), which LoRA cannot adapt\."),
        (["--target_modules", ","], r"^--target_modules must name at least one module"),
        (["--target_modules", "q_proj,vproj"], r"^--target_modules 'q_proj,vproj' names vproj, which matches no module "
         r"of the base model \(the tiny Llama pretrained here\) LoRA adapts"),  # it used to train q_proj only
        (["--task", "llm_selection", "--target_modules", "q_prj"], r"^--target_modules 'q_prj' selects no module"),
        (["--lora_alpha", "0"], r"^--lora_alpha must be a positive finite number \(e.g. the default 16\), got 0.0"),
        (["--lora_alpha", "nan"], r"^--lora_alpha must be a positive finite number .*got nan"),
        (["--lora_alpha", "-16"], r"^--lora_alpha must be a positive finite number .*got -16.0"),
        (["--lora_alpha", "inf"], r"^--lora_alpha must be a positive finite number .*got inf"),
        (["--pretrain_learning_rate", "nan"], r"^--pretrain_learning_rate must be a positive finite number .*got nan"),
        (["--pretrain_learning_rate", "0"], r"^--pretrain_learning_rate must be a positive finite number .*got 0.0"),
    ],
)  # fmt: skip
def test_bad_model_flags_are_refused_by_name_and_leave_the_earlier_results(tmp_path, extra, match):
    from hf_ext.recipes.hyperinf import main

    out = tmp_path / "out"
    _plant(out, _EARLIER)
    with pytest.raises(ValueError) as refused:
        main([*TINY, *extra, "--output_dir", str(out)])
    _unchanged(out, _EARLIER)
    assert re.search(match, str(refused.value)), str(refused.value)


def test_target_modules_are_checked_against_a_given_base_folder(tmp_path):
    """With --model_name_or_path the names are checked against that base (here a GPT-2, whose attention is `c_attn`,
    a transformers Conv1D) from its config alone, before anything is written."""
    from transformers import GPT2Config

    from hf_ext.recipes.hyperinf import validate_args

    base = tmp_path / "gpt2"
    GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300).save_pretrained(base)
    common = ["--model_name_or_path", str(base), "--max_train", "40", "--methods", "tracin", "--vocab_size", "300"]
    with pytest.raises(ValueError, match=r"--target_modules 'q_proj,v_proj' selects no module .*named .*c_attn.*"
                       r"e\.g\. c_attn\.$"):  # fmt: skip
        validate_args(*_parse([*common, "--output_dir", str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists()
    validate_args(*_parse([*common, "--target_modules", "c_attn", "--output_dir", str(tmp_path / "out")]))


def test_the_target_modules_example_is_one_the_base_has(tmp_path):
    """The refusal's example was always q_proj,v_proj, which a BERT base (query / value) does not have."""
    from transformers import BertConfig

    from hf_ext.recipes.hyperinf import validate_args

    base = tmp_path / "bert"
    BertConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=300
    ).save_pretrained(base)
    common = ["--model_name_or_path", str(base), "--max_train", "40", "--methods", "tracin", "--vocab_size", "300"]
    with pytest.raises(ValueError, match=r"selects no module .*named .*query.*e\.g\. query,value\.$"):
        validate_args(*_parse([*common, "--output_dir", str(tmp_path / "out")]))
    validate_args(*_parse([*common, "--target_modules", "query,value", "--output_dir", str(tmp_path / "out")]))


def test_a_fresh_run_records_the_model_flags(tmp_path):
    from hf_ext.recipes.hyperinf import RUN_DATA_FILE, start_run_files

    out = tmp_path / "out"
    out.mkdir()
    argv = [*TINY, "--target_modules", "v_proj, q_proj", "--output_dir", str(out)]
    task, model_args, _, training_args = _parse(argv)
    start_run_files(task, model_args, training_args)
    record = json.loads((out / RUN_DATA_FILE).read_text())
    assert record["seed"] == 42 and record["max_train"] == 40  # the data flags, as before
    assert {k: record[k] for k in ("lora_r", "lora_alpha", "use_rslora", "target_modules")} == {
        "lora_r": 8, "lora_alpha": 16.0, "use_rslora": True, "target_modules": "q_proj,v_proj"
    }  # fmt: skip
    assert {k: record[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "pretrain_steps")} == {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "pretrain_steps": 2
    }  # fmt: skip
    assert record["pretrain_learning_rate"] == 3e-3 and record["model_name_or_path"] is None


def _recorded_interrupted_run(tmp_path, argv):
    """An interrupted run's --output_dir whose record was written by a fresh run of `argv` (as `run` does it: after
    `validate_args`, which fills in the default --domains)."""
    from hf_ext.recipes.hyperinf import RUN_DATA_FILE, _run_data, validate_args

    parsed = _parse([*argv, "--output_dir", str(tmp_path / "fresh")])
    validate_args(*parsed)
    out = _interrupted_run(tmp_path, 2)
    (out / RUN_DATA_FILE).write_text(json.dumps(_run_data(parsed[0], parsed[1], parsed[3])))
    return out


@pytest.mark.parametrize(
    "flag, value, saved",
    [
        ("lora_alpha", "64", "16.0"),
        ("use_rslora", "false", "True"),
        ("lora_r", "4", "8"),
        ("target_modules", "q_proj,k_proj,v_proj", "'q_proj,v_proj'"),
        ("hidden_size", "64", "32"),
        ("num_hidden_layers", "3", "2"),
        ("num_attention_heads", "4", "2"),
        ("pretrain_steps", "50", "2"),
        ("pretrain_learning_rate", "0.01", "0.003"),
    ],
)
def test_resume_with_another_model_flag_is_refused_by_name(tmp_path, flag, value, saved):
    from hf_ext.recipes.hyperinf import validate_args

    out = _recorded_interrupted_run(tmp_path, TINY_STEPS)
    resume = [*TINY_STEPS, "--max_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint"]
    validate_args(*_parse(resume))  # the same flags
    validate_args(*_parse([*resume, "--target_modules", "v_proj,q_proj"]))  # the same set of modules
    with pytest.raises(ValueError) as refused:
        validate_args(*_parse([*resume, f"--{flag}", value]))
    message = str(refused.value)
    assert message.startswith("--resume_from_checkpoint continues a run with another model: "), message
    assert f"--{flag} " in message and f"(the interrupted run used {saved})" in message, message
    assert "start afresh in another --output_dir" in message


def test_resume_with_other_data_and_another_model_names_both(tmp_path):
    from hf_ext.recipes.hyperinf import validate_args

    out = _recorded_interrupted_run(tmp_path, TINY_STEPS)
    argv = [*TINY_STEPS, "--max_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint", "--seed", "3",
            "--lora_alpha", "32"]  # fmt: skip
    with pytest.raises(ValueError, match=r"on other data: --seed 3 \(the interrupted run used 42\).*, and with another "
                       r"model: --lora_alpha 32.0 \(the interrupted run used 16.0\)"):  # fmt: skip
        validate_args(*_parse(argv))


def test_a_record_without_the_model_flags_is_resumed_with_a_warning(tmp_path, caplog):
    """A run started before the model flags were recorded: its data flags are still checked, the model flags cannot
    be, and the resume says so."""
    from hf_ext.recipes.hyperinf import RUN_DATA_FILE, validate_args

    out = _recorded_interrupted_run(tmp_path, TINY_STEPS)
    record = json.loads((out / RUN_DATA_FILE).read_text())
    old = {k: v for k, v in record.items() if k not in ("lora_alpha", "lora_r", "use_rslora", "target_modules",
                                                         "hidden_size", "num_hidden_layers", "num_attention_heads",
                                                         "pretrain_steps", "pretrain_learning_rate",
                                                         "model_name_or_path")}  # fmt: skip
    (out / RUN_DATA_FILE).write_text(json.dumps(old))
    resume = [*TINY_STEPS, "--max_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint"]
    with caplog.at_level(logging.WARNING, logger="hf_ext.recipes.hyperinf"):
        validate_args(*_parse([*resume, "--lora_alpha", "64"]))
    assert "records no --model_name_or_path, --hidden_size" in caplog.text and "resumed unchecked" in caplog.text
    with pytest.raises(ValueError, match=r"--seed 3 \(the interrupted run used 42\)"):  # the data is still checked
        validate_args(*_parse([*resume, "--seed", "3"]))
    (out / RUN_DATA_FILE).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_ext.recipes.hyperinf"):
        validate_args(*_parse(resume))
    assert f"has no {RUN_DATA_FILE}" in caplog.text and "resumed unchecked" in caplog.text


def test_a_real_interrupted_run_resumed_with_another_lora_alpha_is_refused_before_any_work(tmp_path):
    """The repro: a run checkpointed at step 2, resumed with --lora_alpha 64 (it used to continue at 4x the LoRA
    scaling and report the result as the run's). Refused by name; the checkpoint and base are left as they were."""
    import shutil

    from hf_ext.recipes.hyperinf import RUN_DATA_FILE, main

    args = [*TINY_STEPS, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]
    full = tmp_path / "full"
    main([*args, "--output_dir", str(full)])
    stopped = tmp_path / "stopped"
    for part in ("base", "checkpoint-2"):
        shutil.copytree(full / part, stopped / part)
    shutil.copy(full / RUN_DATA_FILE, stopped / RUN_DATA_FILE)
    before = sorted(p.name for p in stopped.iterdir())
    with pytest.raises(ValueError, match=r"with another model: --lora_alpha 64.0 \(the interrupted run used 16.0\)"):
        main([*args, "--lora_alpha", "64", "--output_dir", str(stopped), "--resume_from_checkpoint"])
    assert sorted(p.name for p in stopped.iterdir()) == before


_LLM_EARLIER = [
    "llm_selection_results.json",
    "llm_selection_scores.json",
    "llm_selection.md",
    "hyperinf_run_data.json",
]
_GIVEN = ["--max_train", "40", "--num_val", "10", "--num_test", "10", "--num_train_epochs", "1", "--methods",
          "tracin", "--num_threads", "1", "--disable_tqdm", "true"]  # fmt: skip


def _small_base(path, rows: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=rows, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(path)  # fmt: skip
    return path


@pytest.mark.parametrize("task", ["classification", "llm_selection"])
def test_a_base_smaller_than_the_embedded_tokenizer_is_refused_before_the_earlier_results(tmp_path, task):
    """A base folder without a tokenizer gets the embedded BPE of --vocab_size; a base embedding fewer tokens failed
    the fine-tuning with a bare IndexError, after the earlier run's results had been removed (hi19f note). rv20:
    `--task llm_selection` was not checked (the earlier results were removed, then the IndexError), and a base of 64
    rows was advised `--vocab_size 64 or less`, which is refused (the embedded tokenizer needs >= 259): no
    --vocab_size can fit it, so the message names the base's own tokenizer instead."""
    from hf_ext.recipes.hyperinf import main

    base = _small_base(tmp_path / "base", 64)
    out = tmp_path / "out"
    earlier = _EARLIER if task == "classification" else _LLM_EARLIER
    _plant(out, earlier)
    common = [*_GIVEN, "--task", task, "--vocab_size", "300", "--model_name_or_path", str(base), "--output_dir",
              str(out)]  # fmt: skip
    with pytest.raises(ValueError) as refused:
        main(common)
    text = str(refused.value)
    assert re.match(r"The task's token ids reach \d+, but the base model .* embeds 64 tokens: the base folder has no "
                    r"tokenizer, so the embedded tokenizer of --vocab_size 300 was used\. No --vocab_size fits: the "
                    r"embedded tokenizer has at least 259 tokens", text), text  # fmt: skip
    assert f"tokenizer.save_pretrained({str(base)!r})" in text
    assert "--vocab_size 64" not in text
    _unchanged(out, earlier)


@pytest.mark.parametrize("task", ["classification", "llm_selection"])
def test_a_base_of_enough_rows_is_advised_a_vocab_size_that_fits(tmp_path, task):
    """A base embedding 270 tokens (>= the embedded tokenizer's smallest size, 259) is advised --vocab_size 270 or
    less, and that advice passes the check (the run is refused by --vocab_size 300 only)."""
    from hf_ext.recipes.hyperinf import main

    base = _small_base(tmp_path / "base", 270)
    out = tmp_path / "out"
    earlier = _EARLIER if task == "classification" else _LLM_EARLIER
    _plant(out, earlier)
    common = [*_GIVEN, "--task", task, "--model_name_or_path", str(base), "--output_dir", str(out)]
    with pytest.raises(ValueError, match=r"embeds 270 tokens: .* or pass --vocab_size 270 or less\.$"):
        main([*common, "--vocab_size", "300"])
    _unchanged(out, earlier)
    if task == "classification":  # following the advice runs (one task is enough: the check is shared)
        results = main([*common, "--vocab_size", "270"])
        assert results["selection"]


def test_a_base_whose_own_tokenizer_outgrows_its_embedding_is_refused_with_that_reason(tmp_path):
    """A base folder holding a tokenizer larger than its embedding is tokenized with it (--vocab_size does not apply):
    the refusal says so, not that the folder has no tokenizer."""
    from hf_ext.data import build_tokenizer
    from hf_ext.recipes.hyperinf import main

    base = _small_base(tmp_path / "base", 270)
    build_tokenizer(300).save_pretrained(base)
    out = tmp_path / "out"
    _plant(out, _EARLIER)
    with pytest.raises(ValueError) as refused:
        main([*_GIVEN, "--model_name_or_path", str(base), "--output_dir", str(out)])
    text = str(refused.value)
    assert "embeds 270 tokens: the tokenizer saved in that folder has more tokens than the model's embedding" in text
    assert "no tokenizer" not in text and "--vocab_size" not in text
    _unchanged(out, _EARLIER)
