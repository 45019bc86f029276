"""Audit fs49: the neuralgrok recipe refuses --methods with neuralgrok under FSDP before anything trains or is written.

Before, NeuralGrokTrainer refused it only when it was built: on 2 gloo ranks with accelerate's FSDP2 plugin honoured on
CPU (`_fsdp_on_cpu`) and the default --methods none,normalize,grokfast_ema,neuralgrok the recipe trained the first
three methods, wrote their run records and an empty neuralgrok-seed0/ folder, then stopped with the trainer's
ValueError (no results)."""

from __future__ import annotations

import pytest

from hf_ext.recipes.neuralgrok import main

_TINY = ["--p", "11", "--hidden_size", "32", "--disable_tqdm", "true", "--report_to", "none", "--seeds", "0",
         "--use_cpu", "true", "--max_steps", "2", "--eval_strategy", "no"]  # fmt: skip


@pytest.mark.parametrize(
    "how", [["--fsdp", "full_shard auto_wrap", "--fsdp_config", '{"fsdp_version": 2}'], "ACCELERATE_USE_FSDP"]
)
def test_neuralgrok_method_under_fsdp_refused_before_any_run(tmp_path, monkeypatch, how):
    out = tmp_path / "out"
    flags = []
    if how == "ACCELERATE_USE_FSDP":  # accelerate launch with an FSDP config sets it for the ranks
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    else:
        flags = how
    with pytest.raises(ValueError, match="--methods neuralgrok does not run under FSDP"):
        main([*_TINY, "--methods", "none,neuralgrok", *flags, "--output_dir", str(out)], plots=False)
    assert not out.exists()  # nothing trained or written


def test_other_methods_under_fsdp_not_refused(tmp_path, monkeypatch):
    """The other transforms run under FSDP2 (docs/neuralgrok.md): not refused (one CPU process: accelerate's FSDP
    setting is not applied there, so the run trains)."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    out = tmp_path / "out"
    results = main([*_TINY, "--methods", "none,normalize", "--output_dir", str(out)], plots=False)
    assert set(results["methods"]) == {"none", "normalize"}
    assert (out / "neuralgrok_results.json").is_file()
