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
]  # fmt: skip

CASES = {
    # recipe: (arguments, [(checkpoint folder relative to output_dir, final weights relative to output_dir)])
    "pretrain": (PRETRAIN, [("", "model.safetensors")]),
    "grape": (GRAPE, [("", "model.safetensors")]),
    "metadata_pretrain": (METADATA, [("url_conditioned", "url_conditioned/model.safetensors")]),
}


RESULTS = {"pretrain": "pretrain_results.json", "grape": "grape_results.json"}  # the recipes reporting train_loss


@pytest.mark.parametrize("name", sorted(CASES))
def test_bare_resume_flag_continues_exactly(name, tmp_path):
    main = importlib.import_module(f"hf_ext.recipes.{name}").main
    args, runs = CASES[name]
    common = [*args, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--seed", "3"]
    if "--logging_steps" not in args:
        common += ["--logging_steps", "1"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    main([*common, "--output_dir", str(full)])
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
