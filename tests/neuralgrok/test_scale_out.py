"""NeuralGrok under FSDP2 (`fully_shard`) and DDP on 2 gloo ranks: the gradient transforms (the amplifier's per-tensor
softmax and norm, the normalisation control, Grokfast) and the logged AGE match one process on the whole batch; the
outer step under DDP transforms the global batch's gradient as one process does; FSDP2 is refused by the outer step."""

from __future__ import annotations

import json

import pytest


@pytest.mark.distributed
def test_gradient_transforms_under_fsdp2_and_ddp_match_one_process(tmp_path, run_two_ranks):
    run_two_ranks("tests/neuralgrok/scripts/scale_out_neuralgrok.py", tmp_path)
    rank0, rank1 = json.loads((tmp_path / "scale_out_neuralgrok.json").read_text())
    for r in (rank0, rank1):
        for name in ("neuralgrok", "neuralgrok_ablation", "normalize", "grokfast_ema"):
            res = r[name]
            assert res["param_type"] == "DTensor" and res["moved"] > 1e-3, name
            assert res["fsdp2"] < 1e-5, (name, res)
            assert res["ddp"] < 1e-5, (name, res)
            assert res["fsdp2_metrics_rel"] < 1e-5, (name, res)  # age_raw / age_transformed over all shards
        for name, error in r["tiny_sharded_norm_error"].items():  # |g| ~ 1e-25: norm c, not the eps floor's 1e7
            assert error < 1e-5, (name, error)
        assert r["outer_ddp"]["moved"] > 1e-3 and r["outer_ddp"]["ddp"] < 1e-5, r["outer_ddp"]
        assert r["outer_fsdp2_error"] and "FSDP2" in r["outer_fsdp2_error"]
