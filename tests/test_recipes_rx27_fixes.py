"""rx27 F3: a resumed fresh model is rebuilt from the run's flags, so a config entry that hf_ext now derives otherwise
changed the model mid-run without a word: a FOG run with --config_overrides initializer_range=0.01 started before
2026-12-06 (input multiplier x50) went on at x100 after the upgrade (FogConfig.fog derives 1/initializer_range), and its
record refused the --config_overrides that would have kept x50. The resumed model keeps the checkpoint's entries."""

import json
import shutil

from hf_ext.recipes import pretrain

FOG = [
    "--model_type", "fog", "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1",
    "--num_attention_heads", "4", "--block_size", "32", "--per_device_train_batch_size", "4", "--max_eval_blocks", "4",
    "--max_new_tokens", "2", "--vocab_size", "512", "--save_strategy", "steps", "--save_steps", "1", "--max_steps", "2",
    "--disable_tqdm", "true", "--report_to", "none", "--use_cpu", "true",
    "--config_overrides", "initializer_range=0.01",
]  # fmt: skip


def _input_upscale(folder):
    return json.loads((folder / "config.json").read_text())["input_upscale"]


def test_a_resumed_fog_model_keeps_the_checkpoints_input_multiplier(tmp_path):
    run = tmp_path / "run"
    pretrain.main(FOG + ["--output_dir", str(run)])
    assert _input_upscale(run / "checkpoint-1") == 100.0  # 1 / initializer_range
    shutil.rmtree(run / "checkpoint-2")  # interrupted after checkpoint-1, written by an hf_ext that kept x50
    config = json.loads((run / "checkpoint-1" / "config.json").read_text())
    (run / "checkpoint-1" / "config.json").write_text(json.dumps({**config, "input_upscale": 50.0}))
    pretrain.main(FOG + ["--output_dir", str(run), "--resume_from_checkpoint", "last"])
    assert _input_upscale(run / "checkpoint-2") == 50.0
    assert _input_upscale(run) == 50.0
