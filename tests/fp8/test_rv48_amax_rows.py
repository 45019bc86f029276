"""A resumed delayed-scaling FP8 checkpoint's output-gradient amaxes are rescaled by the rows each process trains per
optimizer step, not by the number of processes.

Each rank's loss is normalised by the rows (tokens) that rank trains per step, so its output gradient scales with
1 / (per-device batch x gradient accumulation), whatever the world size (one process at batch 2 records about twice
the gradient amaxes of one at batch 4: 2.0-4.7x over the first layers and steps of tests/fp8/scripts/ddp_emulated.py's
model). `Fp8Trainer` rescaled the column by `world_size / saved`, right only at the same global batch: a 2-rank
checkpoint resumed in one process with the same flags (half the global batch, the same rows per process) had its
gradient scales halved, 2x off, and one resumed on the same number of processes with another per-device batch was
not rescaled at all."""

import json
import logging
import shutil

import torch
from safetensors.torch import load_file

from .test_peft_interop import fp8_buffers, fp8_fog, trainer


def _checkpoint(tmp_path, ranks=1):
    trainer(fp8_fog(), tmp_path / "run", max_steps=2).train()  # per-device batch 4, one process
    checkpoint = tmp_path / "run" / "checkpoint-2"
    if ranks == 2:  # the RNG files a 2-process run writes
        for rank in (0, 1):
            shutil.copy(checkpoint / "rng_state.pth", checkpoint / f"rng_state_{rank}.pth")
        (checkpoint / "rng_state.pth").unlink()
    return checkpoint


def _resume(checkpoint, tmp_path, caplog):
    t = trainer(fp8_fog(), tmp_path / "resumed", max_steps=4)  # per-device batch 4, one process
    with caplog.at_level(logging.INFO, logger="hf_ext.fp8.trainer"):
        t._load_from_checkpoint(str(checkpoint))  # what train(resume_from_checkpoint=...) restores the model with
        t._fp8_rescale_for(t._fp8_rows())  # and what its training loop does first, with this run's batch size
    return fp8_buffers(t.model)


def _gradient_columns(buffers, saved):
    hist = [k for k in buffers if k.endswith("fp8_amax_history")]
    assert hist and all(saved[k][:2, 2].abs().min() > 0 for k in hist)  # two recorded steps
    return hist


def test_a_checkpoint_records_the_rows_per_process_and_step(tmp_path):
    record = json.loads((_checkpoint(tmp_path) / "fp8_batch.json").read_text())
    assert record == {"rows_per_process_step": 4, "world_size": 1}


def test_two_ranks_resumed_in_one_process_with_the_same_per_device_batch_keep_their_gradient_amaxes(tmp_path, caplog):
    """Each rank of the 2-rank run trained 4 rows per step, as the resumed process does: nothing to rescale (0.5
    before)."""
    checkpoint = _checkpoint(tmp_path, ranks=2)
    saved = load_file(str(checkpoint / "model.safetensors"))
    buffers = _resume(checkpoint, tmp_path, caplog)
    for k in _gradient_columns(buffers, saved):
        assert torch.equal(buffers[k], saved[k])
    assert "rescaled" not in caplog.text


def test_the_same_number_of_processes_with_other_rows_per_step_is_rescaled(tmp_path, caplog):
    """A checkpoint of 8 rows per process and step (e.g. gradient_accumulation_steps=2) resumed at 4: each process's
    loss is normalised by half the rows, its output gradients are twice as large (not rescaled before)."""
    checkpoint = _checkpoint(tmp_path)
    (checkpoint / "fp8_batch.json").write_text(json.dumps({"rows_per_process_step": 8, "world_size": 1}))
    saved = load_file(str(checkpoint / "model.safetensors"))
    buffers = _resume(checkpoint, tmp_path, caplog)
    for k in _gradient_columns(buffers, saved):
        assert torch.equal(buffers[k][:, 2], saved[k][:, 2] * 2)
        assert torch.equal(buffers[k][:, :2], saved[k][:, :2])
        scale = k.replace("fp8_amax_history", "fp8_scale_amax")
        assert torch.equal(buffers[scale][2], saved[scale][2] * 2)
    assert "rescaled by 2" in caplog.text


def test_a_two_rank_checkpoint_at_half_the_rows_resumed_at_the_same_global_batch_is_halved(tmp_path, caplog):
    """The case the 2-rank test of tests/fp8/test_fp8_amax_reduction.py runs: 2 ranks x 2 rows, resumed by one process
    with 4 rows per step."""
    checkpoint = _checkpoint(tmp_path, ranks=2)
    (checkpoint / "fp8_batch.json").write_text(json.dumps({"rows_per_process_step": 2, "world_size": 2}))
    saved = load_file(str(checkpoint / "model.safetensors"))
    buffers = _resume(checkpoint, tmp_path, caplog)
    for k in _gradient_columns(buffers, saved):
        assert torch.equal(buffers[k][:, 2], saved[k][:, 2] * 0.5)


def test_train_resumes_with_the_rescale_once(tmp_path, caplog):
    """Through `train(resume_from_checkpoint=)`: a checkpoint of 8 rows per step resumed at 4 is rescaled by 2 once (the
    load and the training loop's start do not both apply it)."""
    checkpoint = _checkpoint(tmp_path)
    (checkpoint / "fp8_batch.json").write_text(json.dumps({"rows_per_process_step": 8, "world_size": 1}))
    with caplog.at_level(logging.INFO, logger="hf_ext.fp8.trainer"):
        trainer(fp8_fog(), tmp_path / "resumed", max_steps=4).train(resume_from_checkpoint=str(checkpoint))
    assert caplog.text.count("rescaled by 2") == 1
