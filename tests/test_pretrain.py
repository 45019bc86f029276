"""The pretrain recipe end to end at tiny size, its input checks, and a 2-rank CPU run."""

import json
import os
import subprocess
import sys

import pytest

from hf_ext.recipes.pretrain import main

TINY = [
    "--hidden_size", "64", "--intermediate_size", "128", "--num_hidden_layers", "2", "--num_attention_heads", "4",
    "--block_size", "64", "--per_device_train_batch_size", "8", "--max_eval_blocks", "16", "--max_new_tokens", "8",
    "--logging_steps", "5", "--learning_rate", "3e-3", "--model_type", "llama",
]


def test_pretrain_end_to_end_loss_decreases_and_reloads(tmp_path, repo_root):
    out = tmp_path / "run"
    metrics = main(TINY + ["--max_steps", "15", "--output_dir", str(out)])  # 3 logs: 8.24, 7.72, 7.29
    losses = [loss for _, loss in metrics["loss_curve"]]
    assert len(losses) >= 3 and losses[-1] < losses[0] * 0.9
    assert metrics["perplexity"] < 4096
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "tokenizer.json").is_file()
    code = (
        "import json,sys,torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m=AutoModelForCausalLM.from_pretrained({str(out)!r}); t=AutoTokenizer.from_pretrained({str(out)!r})\n"
        "ids=t('The return value of', return_tensors='pt', add_special_tokens=False)\n"
        "print(json.dumps({'n': sum(p.numel() for p in m.parameters()), 'logits': m(**ids).logits.shape[-1]}))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, env={**os.environ}, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["logits"] == 4096 and info["n"] > 0
    saved = json.loads((out / "pretrain_results.json").read_text())
    assert saved["sample"].startswith("The return value of")


def test_offline_dataset_name_is_refused_before_work(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="embedded offline corpus"):
        main(TINY + ["--dataset_name", "wikitext", "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-4"])
def test_bad_block_size(tmp_path, value):
    with pytest.raises(ValueError, match="--block_size"):
        main(TINY + ["--block_size", value, "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_missing_text_column_names_the_option(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"content": f"line {i} " * 20}) for i in range(20)))
    with pytest.raises(ValueError, match="--text_column"):
        main(TINY + ["--train_file", str(data), "--output_dir", str(tmp_path / "o")])
    metrics = main(
        TINY + ["--train_file", str(data), "--text_column", "content", "--max_steps", "2",
                "--block_size", "16", "--output_dir", str(tmp_path / "o2")]
    )
    assert metrics["eval_loss"] > 0


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="--output_dir"):
        main(TINY + ["--output_dir", str(blocker / "sub")])


@pytest.mark.distributed
@pytest.mark.parametrize(
    "launcher",
    # `make test` runs the README's `accelerate launch` form; the other launch forms are `extended`
    ["accelerate"]
    + [pytest.param(f, marks=pytest.mark.extended) for f in ("torchrun", "accelerate -m", "torchrun -m")],
)
def test_two_rank_cpu_run(tmp_path, repo_root, launcher, run_on_free_port):
    """The README's multi-process CPU commands really start 2 ranks, and the ranks end with identical weights. The
    `-m hf_ext.recipes.pretrain` forms are what a wheel install (no `scripts/`) runs: launched outside the checkout."""
    out = tmp_path / "ddp"
    module_form = launcher.endswith("-m")
    target = ["-m", "hf_ext.recipes.pretrain"] if module_form else [os.path.join(repo_root, "scripts", "pretrain.py")]

    def cmd(port):
        if launcher.startswith("accelerate"):
            head = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    os.path.join(repo_root, "scripts", "accelerate", "cpu_2ranks.yaml"), "--main_process_port", str(port)]
        else:
            head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
        return [*head, *target, "--use_cpu", *TINY, "--max_steps", "6",
                "--max_new_tokens", "2", "--output_dir", str(out)]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"PYTHONPATH": repo_root} if module_form else {})}
    res = run_on_free_port(cmd, cwd=tmp_path if module_form else repo_root, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "terminate called" not in res.stderr
    assert "perplexity" in res.stdout
    assert (out / "model.safetensors").is_file()
    saved = json.loads((out / "pretrain_results.json").read_text())
    assert saved["loss_curve"]
    assert saved["world_size"] == 2
    fingerprints = saved["rank_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]


def test_validation_too_short_for_one_block_is_refused(tmp_path):
    """An empty evaluation set used to report eval_loss 0.0 and perplexity 1.0; now it is refused before training."""
    train = tmp_path / "train.txt"
    train.write_text("\n".join(f"line {i} " * 30 for i in range(40)))
    valid = tmp_path / "valid.txt"
    valid.write_text("short line\n")
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="No evaluation block.*--validation_file"):
        main(TINY + ["--train_file", str(train), "--validation_file", str(valid), "--output_dir", str(out)])
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    "args, flag", [(["--model_type", "no_such_arch"], "--model_type"), (["--prompt", ""], "--prompt")]
)
def test_bad_model_type_and_empty_prompt_fail_before_work(tmp_path, args, flag):
    """Both used to fail late: the model type after tokenizer and packing, the empty prompt after training."""
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=flag):
        main(TINY + args + ["--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--attn_implementation", "sdpaa"], "--attn_implementation"),
        (["--attn_implementation", "flash_attention_2"], "--attn_implementation"),
        (["--model_type", "gpt2", "--num_key_value_heads", "2"], "--num_key_value_heads"),
        (["--model_type", "bloom"], "--intermediate_size"),
    ],
)
def test_flags_a_fresh_model_cannot_honour_fail_before_work(tmp_path, args, flag):
    """A misspelt kernel used to fail after the tokenizer and packing; a size flag the architecture has no field for
    (GQA heads on GPT-2, a width on bloom) used to be stored on the config and ignored."""
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=flag):
        main(TINY + args + ["--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("model_type, width_field", [("gpt2", "n_inner"), ("opt", "ffn_dim"), ("llama", "intermediate_size")])
def test_intermediate_size_reaches_the_mlp_of_every_architecture(model_type, width_field):
    """GPT-2 names the MLP width n_inner and OPT ffn_dim: --intermediate_size was stored as an unused attribute and
    the model got 4 x hidden_size."""
    from transformers import AutoModelForCausalLM

    from hf_ext.recipes.pretrain import ModelArguments, fresh_config

    args = ModelArguments(model_type=model_type, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                          num_attention_heads=2)
    config = fresh_config(args, vocab_size=64, block_size=16)
    assert getattr(config, width_field) == 48
    model = AutoModelForCausalLM.from_config(config)
    widths = {min(p.shape) for n, p in model.named_parameters() if p.dim() == 2 and 48 in p.shape}
    assert widths, "no MLP matrix of width 48 in the built model"
    default = fresh_config(ModelArguments(model_type=model_type), vocab_size=64, block_size=16)
    assert getattr(default, width_field) == 384


class _PastValidation(RuntimeError):
    pass


def _stop_after_validation(monkeypatch):
    import hf_ext.data

    def stop(*args, **kwargs):
        raise _PastValidation("the run went past argument validation")

    monkeypatch.setattr(hf_ext.data, "build_tokenizer", stop)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--fp8_backend", "emulated", "--fp8_recipe", "rowwise"], "--fp8_recipe rowwise is a torchao recipe"),
        (["--fp8_backend", "none", "--fp8_recipe", "rowwise"], "--fp8_recipe rowwise is a torchao recipe"),
        (["--fp8_scaling", "current"], "--fp8_scaling current sets the emulated backend's scaling"),
        (["--fp8_monitor_steps", "0", "--fp8_monitor_action", "stop"], "--fp8_monitor_steps 0 turns the monitor off"),
        (["--dataset_config_name", "wikitext-2-raw-v1"], "--dataset_config_name=.* --dataset_name, which is not set"),
        (
            ["--fp8_backend", "emulated", "--fp8_monitor_action", "rollback", "--save_strategy", "steps",
             "--save_only_model", "true"],
            "--save_only_model true checkpoints hold only the weights",
        ),  # fmt: skip
    ],
)
def test_flags_the_run_would_ignore_are_refused_before_work(tmp_path, monkeypatch, args, match):
    """Each was accepted and then ignored (the FP8 options belong to another backend or to the monitor that is off)."""
    _stop_after_validation(monkeypatch)
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=match):
        main(TINY + args + ["--output_dir", str(out)])
    assert not out.exists()


def test_fresh_model_flags_with_a_loaded_model_are_refused(tmp_path, monkeypatch):
    """--model_name_or_path loads the model's own config: --num_hidden_layers (etc.) and --vocab_size were ignored."""
    _stop_after_validation(monkeypatch)
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        (model / name).write_text("{}")
    with pytest.raises(ValueError, match="--num_hidden_layers sizes a fresh model"):
        main(["--model_name_or_path", str(model), "--num_hidden_layers", "8", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--vocab_size sizes the tokenizer built on the fly"):
        main(["--tokenizer_name", str(model), "--vocab_size", "512", "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_a_rerun_that_stops_early_leaves_no_older_results(tmp_path, monkeypatch):
    """An older run's pretrain_results.json (and FP8 health files) stayed in --output_dir, looking current, when a
    rerun into the same folder stopped before writing its own."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("pretrain_results.json", "fp8_health.json", "kurtosis.png"):
        (out / name).write_text("from an older run")
    (out / "notes.txt").write_text("not a result file")

    def stop(*args, **kwargs):  # after the arguments, the tokenizer, the data and the Trainer: about to train
        raise _PastValidation("the run stopped when it started training")

    # (not at `build_model`: since sm53 the results are removed once the Trainer is built and a resume's schedule
    # checked, so a run refused there leaves the older run's folder as it was)
    monkeypatch.setattr("hf_ext.utils.resume.train_or_restore_finished", stop)
    with pytest.raises(_PastValidation):
        main(TINY + ["--output_dir", str(out)])
    assert sorted(os.listdir(out)) == ["notes.txt", "pretrain_run.json"]  # the record of this run's flags: current


FOG_TINY = [
    "--model_type", "fog", "--fp8_backend", "none", "--hidden_size", "32", "--intermediate_size", "64",
    "--num_hidden_layers", "2", "--num_attention_heads", "2", "--block_size", "32", "--vocab_size", "512",
    "--per_device_train_batch_size", "2", "--max_eval_blocks", "4", "--max_new_tokens", "2", "--logging_steps", "1",
    "--seed", "3", "--disable_tqdm", "true", "--report_to", "none",
]  # fmt: skip


# the FSDP2 SHARDED_STATE_DICT run on 2 ranks (test_fsdp2_sharded_state_dict_run_saves_and_reports_its_own_model) is
# one of the checks sharing one launch in tests/test_two_rank_checks.py


def test_a_run_whose_save_writes_no_model_is_not_reported_with_an_earlier_one(tmp_path, monkeypatch):
    """When save_model wrote nothing (FSDP with a sharded state dict in transformers' Trainer), the recipe reloaded
    the earlier run's model left in --output_dir and wrote its eval loss, perplexity and sample as this run's."""
    from hf_ext.fp8 import Fp8Trainer

    out = tmp_path / "run"
    main([*FOG_TINY, "--max_steps", "1", "--output_dir", str(out)])  # an earlier run's model in the folder
    earlier = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(Fp8Trainer, "save_model", lambda self, *args, **kwargs: None)
    with pytest.raises(RuntimeError, match=r"not saved to .*model\.safetensors are an earlier run's"):
        main([*FOG_TINY, "--max_steps", "2", "--output_dir", str(out)])
    assert (out / "model.safetensors").read_bytes() == earlier  # the earlier model stays: never deleted
    assert not (out / "pretrain_results.json").exists()  # and no results of this run's look like they had one
    with pytest.raises(RuntimeError, match="save_model wrote no weights"):
        main([*FOG_TINY, "--max_steps", "1", "--output_dir", str(tmp_path / "fresh")])


def test_the_default_wsd_kwargs_apply_to_warmup_stable_decay_only():
    """The default --lr_scheduler_kwargs held the WSD options for every schedule; now they fill in for
    warmup_stable_decay only, and given kwargs are kept as given."""
    from hf_ext.recipes.pretrain import WSD_DEFAULT_KWARGS, PretrainTrainingArguments

    assert PretrainTrainingArguments(output_dir="o").lr_scheduler_kwargs == WSD_DEFAULT_KWARGS
    assert PretrainTrainingArguments(output_dir="o", lr_scheduler_type="cosine").lr_scheduler_kwargs is None
    given = PretrainTrainingArguments(output_dir="o", lr_scheduler_kwargs='{"num_decay_steps": 3}')
    assert given.lr_scheduler_kwargs == {"num_decay_steps": 3}


def test_another_schedule_trains_with_its_own_options(tmp_path):
    """`--lr_scheduler_type cosine` failed after the tokenizer and the data were built ("unexpected keyword argument
    'num_decay_steps'", the default WSD options) and left pretrain_run.json behind. Now it trains: the logged learning
    rates are the cosine schedule's."""
    import math

    out = tmp_path / "run"
    metrics = main([*TINY, "--fp8_backend", "none", "--lr_scheduler_type", "cosine", "--warmup_steps", "0",
                    "--max_steps", "4", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "4",
                    "--output_dir", str(out)])  # fmt: skip
    assert [step for step, _ in metrics["loss_curve"]] == [1, 2, 3, 4]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    lrs = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert lrs == pytest.approx([3e-3 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)], rel=1e-9)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"num_decay_steps": 0.2}'],
         r"--lr_scheduler_kwargs 'num_decay_steps' is not an option of --lr_scheduler_type cosine \(it takes "
         r"last_epoch, num_cycles\)"),
        (["--lr_scheduler_type", "constant", "--lr_scheduler_kwargs", '{"num_decay_steps": 2, "decay_type": "linear"}'],
         r"'decay_type', 'num_decay_steps' are not options of --lr_scheduler_type constant \(it takes none: drop "),
        (["--lr_scheduler_kwargs", "not json"],
         r"^--lr_scheduler_kwargs must be a JSON object of the schedule's options, e\.g\. "
         r"'\{\"num_decay_steps\": 0\.2\}' \(or '\{\}' for none\); got 'not json'\.$"),
        (["--lr_scheduler_kwargs", '{"num_decay_steps": 0.2,}'],
         r"^--lr_scheduler_kwargs must be a JSON object.*got '\{\"num_decay_steps\": 0\.2,\}' \(Expecting property"),
    ],
)  # fmt: skip
def test_lr_scheduler_kwargs_are_checked_against_the_schedule_before_work(tmp_path, monkeypatch, args, match):
    """Another schedule's options failed with a raw TypeError once training started; a value that is no JSON object
    with Python's "dictionary update sequence element #0 has length 1" (or, starting with "{", the bare json error)."""
    _stop_after_validation(monkeypatch)
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=match):
        main(TINY + args + ["--output_dir", str(out)])
    assert not out.exists()
