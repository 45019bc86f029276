"""Audit fs49: the layer_parallel recipe under an accelerate config with FSDP (set in the environment, as
`accelerate launch --config_file` does) pre-trains its source model sharded, then sweeps and converts a whole one.

Before, the pre-training Trainer (whose own arguments name no FSDP) was sharded by accelerate's environment and its
sharded model went to the sweep: on 2 gloo ranks the main process stopped with "TypeError: `model` holds linear
layers that are not plain nn.Linear (lm_head is FSDPLinear) ..." and source/ held no weights (SHARDED_STATE_DICT)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from hf_ext.recipes.layer_parallel import main

ARGS = [
    "--num_hidden_layers", "4", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
    "--num_key_value_heads", "1", "--vocab_size", "512", "--block_size", "32", "--pretrain_steps", "4",
    "--pair_counts", "1", "--max_ppl_increase", "100", "--max_eval_blocks", "5", "--per_device_eval_batch_size", "2",
    "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
]  # fmt: skip


@pytest.mark.distributed
def test_source_pretrained_under_accelerate_fsdp2_environment_equals_one_process(tmp_path, run_two_ranks):
    two = tmp_path / "two"
    run_two_ranks(
        "tests/scripts/layer_parallel_fsdp2_env_cpu.py", *ARGS, "--per_device_train_batch_size", "4",
        "--output_dir", two, timeout=600,
    )  # fmt: skip
    one = tmp_path / "one"
    main([*ARGS, "--per_device_train_batch_size", "8", "--output_dir", str(one)])  # the same global batch
    two_results = json.loads((two / "results.json").read_text())
    one_results = json.loads((one / "results.json").read_text())
    assert two_results["world_size"] == 2
    assert two_results["source_eval"]["loss"] == pytest.approx(one_results["source_eval"]["loss"], abs=1e-5)
    assert two_results["chosen"] == one_results["chosen"]
    # source/ holds the pre-trained weights (a SHARDED_STATE_DICT save wrote none there)
    two_weights, one_weights = (
        load_file(two / "source" / "model.safetensors"),
        load_file(one / "source" / "model.safetensors"),
    )
    assert sorted(two_weights) == sorted(one_weights)
    assert max(float((two_weights[k] - one_weights[k]).abs().max()) for k in one_weights) < 1e-5
