"""The layer-pairing recipe under two gloo ranks: data-parallel training, everything else once, on the main process."""

from __future__ import annotations

import json
import os
import sys

import pytest


@pytest.mark.distributed
def test_two_ranks_sweep_once_and_save_one_model(tmp_path, repo_root, run_on_free_port, launch_failure, recipe_tiny):
    """Before the per-rank guards both ranks ran the sweep and saved the model, and rank 1 reloaded the folder while
    rank 0 was still writing it ("Unrecognized model ... config.json")."""
    out = tmp_path / "lp"
    args = [
        os.path.join(repo_root, "scripts", "layer_parallel.py"), *recipe_tiny, "--output_dir", str(out),
        "--pretrain_steps", "8", "--max_steps", "4", "--pair_counts", "1,2", "--max_ppl_increase", "100",
        "--logging_steps", "1", "--max_eval_blocks", "5", "--per_device_eval_batch_size", "2", "--eval_strategy",
        "steps", "--eval_steps", "4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root, "HF_HUB_OFFLINE": "1"}
    res = run_on_free_port(
        lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                      str(port), *args],
        cwd=repo_root, timeout=600, env=env,
    )  # fmt: skip
    assert res.returncode == 0, launch_failure(res.stderr)
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2
    assert res.stdout.count("sweep written to") == 1  # the sweep ran on one rank only
    assert res.stdout.count("saved LayerParallelForCausalLM") == 1
    assert results["chosen"]["pairs"] == 2 and results["reload_matches"]
    assert len(results["finetune_loss_curve"]) == 4  # 4 data-parallel steps
    assert (out / "layer_parallel_model" / "config.json").exists() and (out / "sweep.md").exists()
    # 5 evaluation blocks at eval batch 2: the fine-tuning's evaluate() on 2 ranks counted accelerate's padded repeat
    # of a block (6e-3 off); its last point is the final weights' loss, which the main process evaluates once per block
    ((step, curve_loss),) = results["finetune_eval_loss_curve"]
    assert step == 4 and curve_loss == pytest.approx(results["finetuned_eval"]["loss"], abs=1e-5)
