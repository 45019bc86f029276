"""rx27 F3 in the metadata recipe: a resumed fresh sub-run model keeps the checkpoint's config entries that the flags
now set otherwise (a FOG model with --config_overrides initializer_range=0.01 saved before FogConfig.fog derived its
input multiplier from the init std went on at x100 instead of the checkpoint's x50), and a normal resume changes
nothing (no warning)."""

import json
import logging
import shutil

from hf_ext.recipes.metadata_pretrain import main

from .test_recipe import TINY

FOG = [*TINY, "--model_type", "fog", "--config_overrides", "initializer_range=0.01", "--save_strategy", "steps",
       "--save_steps", "1", "--max_steps", "2", "--run_baseline", "false"]  # fmt: skip


def _input_upscale(folder):
    return json.loads((folder / "config.json").read_text())["input_upscale"]


def test_a_resumed_sub_run_keeps_the_checkpoints_config_and_a_normal_resume_warns_nothing(tmp_path, caplog):
    run = tmp_path / "run"
    sub = run / "url_conditioned"
    main([*FOG, "--output_dir", str(run)])
    assert _input_upscale(sub / "checkpoint-1") == 100.0  # 1 / initializer_range
    shutil.rmtree(sub / "checkpoint-2")
    with caplog.at_level(logging.WARNING, logger="hf_ext.recipes.pretrain"):
        main([*FOG, "--output_dir", str(run), "--resume_from_checkpoint", "last"])
    assert not [r for r in caplog.records if "keeps the checkpoint's" in r.getMessage()]
    assert _input_upscale(sub / "checkpoint-2") == 100.0
    shutil.rmtree(sub / "checkpoint-2")  # interrupted after checkpoint-1, written by an hf_ext that kept x50
    config = json.loads((sub / "checkpoint-1" / "config.json").read_text())
    (sub / "checkpoint-1" / "config.json").write_text(json.dumps({**config, "input_upscale": 50.0}))
    with caplog.at_level(logging.WARNING, logger="hf_ext.recipes.pretrain"):
        main([*FOG, "--output_dir", str(run), "--resume_from_checkpoint", "last"])
    assert any("input_upscale=50.0" in r.getMessage() for r in caplog.records)
    assert _input_upscale(sub / "checkpoint-2") == 50.0
    assert _input_upscale(sub) == 50.0
