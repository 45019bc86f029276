"""Audit fs49: NeuralGrokTrainer and PrivateTrainer under FSDP2 with `fsdp_state_dict_type: SHARDED_STATE_DICT`
(the shipped FSDP2 configs) write a whole model at their final `save_model`, as Fp8/Grape/Metadata/WarmupFree
trainers do (hf_ext.utils.fsdp_save.WholeModelSaveMixin). Before, transformers' `save_model` wrote nothing there: not
even the folder, so `from_pretrained` of it failed (2 gloo ranks, tests/scripts/whole_model_save_fsdp2_cpu.py)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.distributed
def test_neuralgrok_and_private_trainers_save_a_whole_model_under_fsdp2_sharded_state_dict(tmp_path, run_two_ranks):
    run_two_ranks("tests/scripts/whole_model_save_fsdp2_cpu.py", tmp_path, timeout=600)
    ranks = json.loads((tmp_path / "whole_model_save.json").read_text())
    assert len(ranks) == 2
    for rank in ranks:
        for name, r in rank.items():
            assert r["fsdp"] and r["moved"] > 1e-4, (name, r)  # sharded, and trained: not a vacuous comparison
            assert "pytorch_model_fsdp_0" in r["checkpoint"], (name, r)  # checkpoints stay sharded, as configured
            assert r["final"] is not None and "model.safetensors" in r["final"], (name, r)
            assert r["saved_diff"] == 0.0, (name, r)
    assert ranks[0] == ranks[1]
