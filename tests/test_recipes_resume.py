"""`--resume_from_checkpoint` (the bare flag: the last checkpoint in --output_dir) continues a recipe exactly.

An interrupted run is simulated by copying the step-2 checkpoint of an uninterrupted 4-step run into a fresh folder;
the resumed run must end with the same weights. (neuralgrok, warmup, hyperinf and layer_parallel have the same check
in their own test folders; federated refuses the flag, cubic_newton has no such flag.)
"""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

# fmt: off
PRETRAIN = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "2",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--max_eval_blocks", "4", "--max_new_tokens", "2",
    "--model_type", "llama", "--fp8_backend", "none", "--vocab_size", "512", "--disable_tqdm", "true",
]
GRAPE = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--reweight_batch_size", "4",
    "--reweight_mini_batch_size", "2", "--reweight_domains_every", "2", "--reweight_tasks_every", "2",
    "--source_domains", "text,numeric,networking,filesystem", "--disable_tqdm", "true", "--use_cpu", "true",
]
METADATA = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
    "--block_size", "64", "--per_device_train_batch_size", "4", "--max_eval_docs", "2", "--doc_eval_steps", "2",
    "--logging_steps", "2", "--guidance_max_new_tokens", "2", "--disable_tqdm", "true", "--vocab_size", "512",
]
# fmt: on

CASES = {
    # recipe: (arguments, [(checkpoint folder relative to output_dir, final weights relative to output_dir)])
    "pretrain": (PRETRAIN, [("", "model.safetensors")]),
    "grape": (GRAPE, [("", "model.safetensors")]),
    "metadata_pretrain": (METADATA, [("url_conditioned", "url_conditioned/model.safetensors")]),
}


RESULTS = {"pretrain": "pretrain_results.json", "grape": "grape_results.json"}  # the recipes reporting train_loss


def _common(name):
    """The flags of the uninterrupted 4-step run of recipe `name` (checkpoints at steps 2 and 4, logs every step)."""
    args, _ = CASES[name]
    common = [*args, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--seed", "3"]
    if "--logging_steps" not in args:
        common += ["--logging_steps", "1"]
    return common


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """`full_run(name)`: the folder of recipe `name`'s uninterrupted 4-step run (`_common`), run once per module and
    shared by the tests that only read it or copy its checkpoints (a refusal in it must leave it as it is)."""
    done = {}

    def get(name):
        if name not in done:
            folder = tmp_path_factory.mktemp(f"full_{name}")
            importlib.import_module(f"hf_ext.recipes.{name}").main([*_common(name), "--output_dir", str(folder)])
            done[name] = folder
        return done[name]

    return get


@pytest.mark.parametrize("name", sorted(CASES))
def test_bare_resume_flag_continues_exactly(name, tmp_path, full_run):
    main = importlib.import_module(f"hf_ext.recipes.{name}").main
    _, runs = CASES[name]
    common = _common(name)
    full, resumed = full_run(name), tmp_path / "resumed"
    for sub, _ in runs:
        assert (full / sub / "checkpoint-2" / "trainer_state.json").is_file()
        shutil.copytree(full / sub / "checkpoint-2", resumed / sub / "checkpoint-2")
    state = resumed / runs[0][0] / "checkpoint-2" / "trainer_state.json"
    stamp = state.stat().st_mtime_ns
    main([*common, "--output_dir", str(resumed), "--resume_from_checkpoint"])
    assert state.stat().st_mtime_ns == stamp  # continued from step 2 rather than retraining (and re-saving) it
    for sub, weights in runs:
        assert (resumed / sub / "checkpoint-4").is_dir()
        a, b = load_file(str(full / weights)), load_file(str(resumed / weights))
        start = load_file(str(full / sub / "checkpoint-2" / "model.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
        assert any(not torch.equal(a[k], start[k]) for k in a)  # steps 3-4 did train
    if name in RESULTS:
        # the mean training loss of the whole run, not of the resumed part (Trainer's training_loss covers the
        # steps of its own train() call only)
        a, b = (json.loads((folder / RESULTS[name]).read_text())["train_loss"] for folder in (full, resumed))
        assert b == pytest.approx(a, rel=1e-6)


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_a_run_stopped_after_its_last_checkpoint_is_restored_not_trained_past_max_steps(name, tmp_path, full_run):
    """A run killed after its checkpoint at --max_steps, before its model and results were written, is rerun with
    the bare flag: the run is restored from that checkpoint and finished as the uninterrupted run finished (same final
    weights, whole-run train loss). It used to be refused ("= --max_steps"); transformers' Trainer alone would train a
    step past --max_steps from it. (The uninterrupted run is the 4-step one of `full_run`, its checkpoint-4 at
    --max_steps.)"""
    main = importlib.import_module(f"hf_ext.recipes.{name}").main
    full, stopped = full_run(name), tmp_path / "stopped"
    shutil.copytree(full / "checkpoint-4", stopped / "checkpoint-4")
    main([*_common(name), "--output_dir", str(stopped), "--resume_from_checkpoint"])
    assert not (stopped / "checkpoint-5").exists()
    a, b = load_file(str(full / "model.safetensors")), load_file(str(stopped / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ra, rb = (json.loads((folder / RESULTS[name]).read_text()) for folder in (full, stopped))
    assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-6)
    if name == "pretrain":
        assert rb["eval_loss"] == ra["eval_loss"] and rb["sample"] == ra["sample"]
        assert rb["loss_curve"] == ra["loss_curve"]
    else:
        assert rb["domain_weights"] == ra["domain_weights"] and rb["task_weights"] == ra["task_weights"]
        assert rb["target_eval_loss"] == ra["target_eval_loss"]


def test_an_fp8_rollback_run_stopped_after_its_last_checkpoint_is_restored(tmp_path):
    """The same with --fp8_monitor_action rollback (`train_with_rollback`): restored with its FP8 scaling state and
    health monitor, no step past --max_steps."""
    from hf_ext.recipes.pretrain import main

    common = [*PRETRAIN[:PRETRAIN.index("--fp8_backend")], "--fp8_backend", "emulated", "--fp8_monitor_steps", "1",
              "--fp8_monitor_action", "rollback", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
              "--seed", "3", "--logging_steps", "1", "--vocab_size", "512", "--disable_tqdm", "true"]  # fmt: skip
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    main([*common, "--output_dir", str(full)])
    shutil.copytree(full / "checkpoint-2", stopped / "checkpoint-2")
    main([*common, "--output_dir", str(stopped), "--resume_from_checkpoint"])
    assert not (stopped / "checkpoint-3").exists()
    a, b = load_file(str(full / "model.safetensors")), load_file(str(stopped / "model.safetensors"))
    assert a.keys() == b.keys() and any("fp8_amax_history" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ha, hb = (json.loads((folder / "fp8_health.json").read_text()) for folder in (full, stopped))
    assert hb == ha


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_a_checkpoint_saved_with_save_only_model_is_refused_before_any_work(name, tmp_path, monkeypatch):
    """`--save_only_model true` writes checkpoints without the optimizer, scheduler and RNG states; a resume from one
    used to run to completion with a fresh optimizer and a restarted LR schedule (other final weights, no warning).
    Now it is refused before any work, naming the flag and what to do instead (a full checkpoint, or a new run from
    the weights)."""
    module = importlib.import_module(f"hf_ext.recipes.{name}")
    args, _ = CASES[name]
    common = [*args, "--save_strategy", "steps", "--save_steps", "2", "--seed", "3", "--logging_steps", "1",
              "--save_only_model", "true"]  # fmt: skip
    out = tmp_path / "run"
    module.main([*common, "--max_steps", "2", "--output_dir", str(out)])  # saving only the weights is allowed
    ckpt = out / "checkpoint-2"
    assert (ckpt / "model.safetensors").is_file() and not (ckpt / "optimizer.pt").exists()

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr("hf_ext.data.build_tokenizer", no_work)
    monkeypatch.setattr(module, "build_tokenizer", no_work, raising=False)
    for value in ([], [str(ckpt)]):  # the bare flag (the newest checkpoint) and the named folder
        with pytest.raises(ValueError, match=r"save_only_model=True: it holds only the model weights.*--model_name"):
            module.main([*common, "--max_steps", "4", "--output_dir", str(out), "--resume_from_checkpoint", *value])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def test_pretrain_resumed_with_a_larger_max_steps_trains_on_or_is_refused(tmp_path, full_run):
    """A finished pretrain run resumed with a larger --max_steps used to be restored at its last step (the flag
    transformers sets at max_steps was taken for a stop by a callback): nothing trained, rc 0, the old results
    rewritten. With a constant schedule it now trains on to the new --max_steps, as a run launched with it does; with
    the default schedule (warmup_stable_decay, a fraction of the run decays) it is refused before any step (the
    finished 4-step run of `full_run` resumed with --max_steps 6)."""
    from hf_ext.recipes.pretrain import main

    common = [*PRETRAIN, "--save_strategy", "steps", "--save_steps", "2", "--seed", "3", "--logging_steps", "1"]
    constant = [*common, "--lr_scheduler_type", "constant", "--lr_scheduler_kwargs", "{}", "--warmup_steps", "0"]
    full, extended, default = tmp_path / "full", tmp_path / "extended", full_run("pretrain")
    main([*constant, "--max_steps", "4", "--output_dir", str(full)])
    main([*constant, "--max_steps", "2", "--output_dir", str(extended)])
    main([*constant, "--max_steps", "4", "--output_dir", str(extended), "--resume_from_checkpoint"])
    assert (extended / "checkpoint-4").is_dir()
    ra, rb = (json.loads((folder / "pretrain_results.json").read_text()) for folder in (full, extended))
    assert [step for step, _ in rb["loss_curve"]] == [1, 2, 3, 4]
    assert [loss for _, loss in rb["loss_curve"]] == pytest.approx([loss for _, loss in ra["loss_curve"]], rel=1e-5)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(extended / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)

    results = (default / "pretrain_results.json").read_text()
    with pytest.raises(ValueError, match=r"^--max_steps 6: .*checkpoint-4 .*max_steps 4.*Resume with --max_steps 4"):
        main([*common, "--max_steps", "6", "--output_dir", str(default), "--resume_from_checkpoint"])
    assert sorted(p.name for p in default.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (default / "pretrain_results.json").read_text() == results


# fmt: off
HYPERINF = [
    "--pretrain_steps", "2", "--hidden_size", "32", "--num_attention_heads", "2", "--max_train", "40", "--num_val",
    "10", "--num_test", "10", "--methods", "tracin", "--num_threads", "1", "--vocab_size", "300", "--disable_tqdm",
    "true", "--save_strategy", "epoch", "--logging_steps", "1",
]
# fmt: on


def test_hyperinf_resumed_with_more_epochs_trains_on_or_is_refused(tmp_path):
    """hyperinf fine-tunes by epochs (--max_steps -1). Its finished 1-epoch fine-tuning resumed with
    --num_train_epochs 2 was restored as finished (nothing trained, rc 0, the 1-epoch model scored as the 2-epoch
    run's). With a constant schedule it now trains on to the 2-epoch step count; a resume whose schedule differs (the
    default linear one over 3 epochs, or another --learning_rate, which a resume ignored) is refused before any step."""
    from hf_ext.recipes.hyperinf import main

    out = tmp_path / "run"
    constant = [*HYPERINF, "--lr_scheduler_type", "constant", "--output_dir", str(out)]
    main([*constant, "--num_train_epochs", "1"])  # 40 examples, batch 16: 3 steps an epoch
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    main([*constant, "--num_train_epochs", "2", "--resume_from_checkpoint"])
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["max_steps"] == 6
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]
    refused = [
        ([*HYPERINF, "--output_dir", str(out), "--num_train_epochs", "3"],
         r"^--num_train_epochs 3.0 \(9 optimizer steps\), --lr_scheduler_type linear: .*checkpoint-6 .*Resume with "
         r"--num_train_epochs 2.0 --lr_scheduler_type constant"),
        ([*constant, "--num_train_epochs", "2", "--learning_rate", "1e-3"],
         r"^--learning_rate 0.001: .*learning rate of step 1 is 0.005 .*would be ignored.*Resume with --learning_rate"),
    ]  # fmt: skip
    for argv, pattern in refused:
        with pytest.raises(ValueError, match=pattern):
            main([*argv, "--resume_from_checkpoint"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
