"""The pretrain recipe with FOG in FP8: default model, monitor PNG, reload + generate, FP8 option checks."""

import json

import pytest

from hf_ext.recipes.pretrain import main

TINY = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "2",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--max_eval_blocks", "8", "--max_new_tokens", "4",
    "--logging_steps", "2", "--learning_rate", "3e-3", "--vocab_size", "512", "--fp8_monitor_steps", "2",
]  # fmt: skip


@pytest.mark.parametrize("backend", ["torchao", "emulated"])
def test_fog_fp8_recipe_trains_monitors_and_reloads(tmp_path, backend):
    out = tmp_path / backend
    metrics = main(TINY + ["--max_steps", "6", "--fp8_backend", backend, "--output_dir", str(out)])
    assert metrics["fp8_backend"] == backend
    assert (out / "kurtosis.png").stat().st_size > 1000
    health = json.loads((out / "fp8_health.json").read_text())
    assert [h["step"] for h in health["history"]] == [2, 4, 6]
    assert "qkv_input/kurtosis/avg" in health["history"][0]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "fog" and config["input_upscale"] == 50.0 and config["intermediate_size"] == 96
    saved = json.loads((out / "pretrain_results.json").read_text())
    assert saved["sample"].startswith("The return value of") and saved["eval_loss"] > 0


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--fp8_backend", "fp4"], "--fp8_backend"),
        (["--fp8_recipe", "blockwise"], "--fp8_recipe"),
        (["--fp8_attention", "true"], "--fp8_attention needs --fp8_backend te .* or emulated"),
        (["--fp8_backend", "torchao", "--fp8_attention", "true"], "torchao has no FP8 attention"),
        (["--fp8_monitor_action", "rollback"], "--save_strategy steps"),
        (["--fp8_monitor_steps", "-1"], "--fp8_monitor_steps"),
        (["--fp8_backend", "te"], "CUDA"),
        (["--fp8_backend", "te", "--fp8_attention", "true"], "CUDA"),  # TE's FP8 attention: allowed, needs a GPU
    ],
)
def test_bad_fp8_options_are_refused_before_work(tmp_path, extra, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(TINY + extra + ["--output_dir", str(out)])
    assert not out.exists()
