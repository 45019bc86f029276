"""Issue 15 item 8 on GPUs (unrun so far: no GPU in the sessions that wrote it): the pretrain recipe under
accelerate's FSDP2 plugin with torchao FP8, from the shipped multi-GPU config, on 2 GPUs."""

import json
import os
import subprocess
import sys

import pytest
import torch

TINY = [
    "--hidden_size", "64", "--intermediate_size", "128", "--num_hidden_layers", "2", "--num_attention_heads", "4",
    "--block_size", "64", "--per_device_train_batch_size", "8", "--max_eval_blocks", "8", "--max_new_tokens", "4",
    "--logging_steps", "2", "--vocab_size", "512", "--max_steps", "6", "--fp8_monitor_steps", "2",
]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_recipe_under_accelerate_fsdp2_fp8_on_two_gpus(tmp_path, repo_root, launch_failure):
    out = tmp_path / "fsdp2"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(repo_root, "scripts", "accelerate", "8gpu_fsdp2_fp8.yaml"),
        "--num_processes", "2", os.path.join(repo_root, "scripts", "pretrain.py"), *TINY, "--output_dir", str(out),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=repo_root)
    assert res.returncode == 0, launch_failure(res.stderr)
    results = json.loads((out / "pretrain_results.json").read_text())
    assert results["fp8_backend"] == "accelerate-ao"
    assert 0 < results["eval_loss"] < 10
