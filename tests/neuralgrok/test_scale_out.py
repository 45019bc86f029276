"""NeuralGrok under FSDP2 (`fully_shard`) and DDP on 2 gloo ranks: the gradient transforms (the amplifier's per-tensor
softmax and norm, the normalisation control, Grokfast) and the logged AGE match one process on the whole batch; the
outer step under DDP transforms the global batch's gradient as one process does; FSDP2 is refused by the outer step.
NeuralGrokTrainer with Grokfast under FSDP2 checkpoints the whole filter state and resumes exactly.

Both tests read one `torchrun` launch of scripts/scale_out_all.py, which runs scale_out_neuralgrok.py's checks and
then fsdp2_grokfast_resume.py's in one process group (a launch costs more than either check)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def _launch(tmp_path_factory):
    return {"out": tmp_path_factory.mktemp("scale_out")}


@pytest.fixture
def scale_out_all(_launch, run_two_ranks):
    """(OUT_DIR, CompletedProcess) of the module's one launch of scale_out_all.py (made by the first test asking)."""
    if "proc" not in _launch:
        _launch["proc"] = run_two_ranks("tests/neuralgrok/scripts/scale_out_all.py", _launch["out"], timeout=400)
    return _launch["out"], _launch["proc"]


@pytest.mark.distributed
def test_gradient_transforms_under_fsdp2_and_ddp_match_one_process(scale_out_all):
    out, _ = scale_out_all
    rank0, rank1 = json.loads((out / "scale_out_neuralgrok.json").read_text())
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


@pytest.mark.distributed
def test_grokfast_under_fsdp2_checkpoints_and_resumes_exactly(tmp_path, scale_out_all):
    """The Grokfast buffers are shards of their parameters (DTensors) under FSDP2: rank 0 handed them to safetensors
    at the first checkpoint ("Attempted to access the data pointer on an invalid python storage") while rank 1 waited
    in the next collective, and rank 0's shards alone would not have been the state. Now every rank gathers the whole
    buffers, rank 0 writes them, and each rank re-shards them on resume: the resumed run is the uninterrupted one."""
    from hf_ext.neuralgrok import NeuralGrokConfig, NeuralGrokTrainer

    out, proc = scale_out_all
    assert "terminate called" not in proc.stderr
    ranks = json.loads((out / "fsdp2_grokfast_resume.json").read_text())
    assert len(ranks) == 2
    for r in ranks:
        for mode, res in r.items():
            assert res["fsdp"] and res["param_type"] == res["buffer_type"] == "DTensor", (mode, res)
            assert res["moved"] > 1e-3 and res["buffer_norm"] > 1e-2, (mode, res)  # not a vacuous comparison
            assert res["saved_types"] == ["Tensor"] and res["saved_vs_step_2"] == 0.0, (mode, res)
            assert res["saved_num_transforms"] == 2, (mode, res)
            assert res["one_process_types"] == ["Tensor"] and res["one_process_vs_step_2"] == 0.0, (mode, res)
            assert len(res["losses"]) == 2 and res["resumed_losses"] == res["losses"], (mode, res)
            assert res["resume_param_diff"] == 0.0 and res["resume_state_diff"] == 0.0, (mode, res)
            assert res["resume_num_transforms"] == 4 and res["resumed_buffers_sharded"], (mode, res)
    assert ranks[0] == ranks[1]

    # the whole trainer in one process: transformers refuses the FSDP checkpoint's model files, before any step
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=False,
    )  # fmt: skip
    ids = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(0)).tolist()
    args = NeuralGrokConfig(
        output_dir=str(tmp_path / "one"), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
        warmup_steps=0, gradient_transform="grokfast_ema", grokfast_window=3, grokfast_warmup=False,
        track_entropy=False, track_train_accuracy=False, use_cpu=True, report_to="none", disable_tqdm=True,
        save_strategy="no",
    )  # fmt: skip
    trainer = NeuralGrokTrainer(
        model=LlamaForCausalLM(cfg), args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids})
    )
    with pytest.raises(ValueError, match="only supported when using PyTorch FSDP"):
        trainer.train(resume_from_checkpoint=str(out / "grokfast_ema" / "run" / "checkpoint-2"))
    assert trainer.state.global_step == 0
