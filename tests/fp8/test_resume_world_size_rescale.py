"""Resuming a delayed-scaling FP8 checkpoint on another number of processes rescales the output-gradient column of the
amax histories by `world_size / saved`: each rank records the amax of its own output gradient, which is the number of
data-parallel ranks times one process's at the same global batch (measured before: 1 process -> 2 ranks drifted 0.014
in the weights two steps after resuming, 6e-8 without FP8; the 2-rank -> 1-process resume against the 2-rank run is
checked in tests/fp8/test_fp8_amax_reduction.py)."""

import logging
import shutil

import torch
from safetensors.torch import load_file

from .test_peft_interop import fp8_buffers, fp8_fog, trainer

MESSAGE = "written by 2 process(es) and is resumed on 1"


def _checkpoint(tmp_path):
    t = trainer(fp8_fog(), tmp_path / "run", max_steps=2)
    t.train()
    return tmp_path / "run" / "checkpoint-2"


def test_a_checkpoint_of_two_ranks_resumed_on_one_process_has_its_gradient_amaxes_halved(tmp_path, caplog):
    checkpoint = _checkpoint(tmp_path)
    for rank in (0, 1):  # what a 2-process run writes
        shutil.copy(checkpoint / "rng_state.pth", checkpoint / f"rng_state_{rank}.pth")
    (checkpoint / "rng_state.pth").unlink()
    # written before fp8_batch.json existed: taken to be resumed at the same global batch (see test_rv48_amax_rows.py)
    (checkpoint / "fp8_batch.json").unlink()
    saved = load_file(str(checkpoint / "model.safetensors"))
    t = trainer(fp8_fog(), tmp_path / "resumed", max_steps=4)
    with caplog.at_level(logging.INFO, logger="hf_ext.fp8.trainer"):
        t._load_from_checkpoint(str(checkpoint))  # what train(resume_from_checkpoint=...) restores the model with
    assert MESSAGE in caplog.text and "rescaled by 0.5" in caplog.text
    buffers = fp8_buffers(t.model)
    hist = [k for k in buffers if k.endswith("fp8_amax_history")]
    assert hist and all(k in saved for k in hist)
    for k in hist:
        assert saved[k][:2, 2].abs().min() > 0  # two recorded steps
        assert torch.equal(buffers[k][:, 2], saved[k][:, 2] * 0.5)
        assert torch.equal(buffers[k][:, :2], saved[k][:, :2])  # the forward columns do not depend on the ranks
        scale = k.replace("fp8_amax_history", "fp8_scale_amax")
        assert torch.equal(buffers[scale][2], saved[scale][2] * 0.5) and torch.equal(
            buffers[scale][:2], saved[scale][:2]
        )


def test_the_same_number_of_processes_resumes_without_a_rescale(tmp_path, caplog):
    checkpoint = _checkpoint(tmp_path)
    saved = load_file(str(checkpoint / "model.safetensors"))
    t = trainer(fp8_fog(), tmp_path / "resumed", max_steps=4)
    with caplog.at_level(logging.INFO, logger="hf_ext.fp8.trainer"):
        t._load_from_checkpoint(str(checkpoint))
    assert "is resumed on" not in caplog.text
    buffers = fp8_buffers(t.model)
    assert all(torch.equal(buffers[k], saved[k]) for k in buffers if k in saved)
    resumed = trainer(fp8_fog(), tmp_path / "resumed", max_steps=4)  # and train() goes through the same load
    with caplog.at_level(logging.INFO, logger="hf_ext.fp8.trainer"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert "is resumed on" not in caplog.text
