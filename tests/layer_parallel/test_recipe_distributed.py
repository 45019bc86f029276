"""The layer-pairing recipe under two gloo ranks: data-parallel training, everything else once, on the main process."""

from __future__ import annotations

import json

import pytest


@pytest.mark.distributed
def test_two_ranks_sweep_once_and_save_one_model(lp_two_ranks):
    """Before the per-rank guards both ranks ran the sweep and saved the model, and rank 1 reloaded the folder while
    rank 0 was still writing it ("Unrecognized model ... config.json"). The run: `recipe_tiny` with 8 pre-training and
    4 fine-tuning steps, pair counts 1 and 2, 5 evaluation blocks at eval batch 2, evaluation at step 4
    (conftest.TWO_RANK_RECIPE_ARGS), the last check of the shared two-rank launch (tests/scripts/checks_in_turn.py)."""
    out, stdout = lp_two_ranks("recipe")  # stdout: what the launch printed during the recipe
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2
    assert stdout.count("sweep written to") == 1  # the sweep ran on one rank only
    assert stdout.count("saved LayerParallelForCausalLM") == 1
    assert results["chosen"]["pairs"] == 2 and results["reload_matches"]
    assert len(results["finetune_loss_curve"]) == 4  # 4 data-parallel steps
    assert (out / "layer_parallel_model" / "config.json").exists() and (out / "sweep.md").exists()
    # 5 evaluation blocks at eval batch 2: the fine-tuning's evaluate() on 2 ranks counted accelerate's padded repeat
    # of a block (6e-3 off); its last point is the final weights' loss, which the main process evaluates once per block
    ((step, curve_loss),) = results["finetune_eval_loss_curve"]
    assert step == 4 and curve_loss == pytest.approx(results["finetuned_eval"]["loss"], abs=1e-5)
