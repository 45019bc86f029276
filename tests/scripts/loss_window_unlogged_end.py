"""2 gloo ranks: `train()` resumed from a checkpoint saved between two logs reports, on each rank, the mean of that
call's steps as transformers composes it (logged parts: the mean over the ranks; the part after the last log: the
rank's own losses), whether or not a log drains the restored loss window before the end.

Usage: loss_window_unlogged_end.py OUT_DIR (writes OUT_DIR/loss_window_unlogged_end.json on rank 0)."""

import json
import os
import sys

import torch
import torch.distributed as dist
from loss_window_two_ranks import TinyLM, _data
from transformers import Trainer, TrainingArguments

from hf_ext.utils.distributed import gather_objects, shutdown_distributed
from hf_ext.utils.resume import with_loss_window


def _trainer(out, logging_steps):
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=out, use_cpu=True, report_to="none", disable_tqdm=True, seed=0, data_seed=0, learning_rate=0.05,
        per_device_train_batch_size=2, max_steps=4, logging_steps=logging_steps, save_strategy="steps", save_steps=2,
    )  # fmt: skip
    trainer = with_loss_window(Trainer)(model=TinyLM(), args=args, train_dataset=_data())
    losses, compute = [], trainer.compute_loss

    def record(*a, **k):
        loss = compute(*a, **k)
        losses.append(float(loss.detach()))
        return loss

    trainer.compute_loss = record
    return trainer, losses


def main(out_dir: str) -> None:
    rows = {}
    for logging_steps in (3, 100):  # a log at step 3 drains the window of steps 1-2; none before the end
        out = os.path.join(out_dir, f"log{logging_steps}")
        _trainer(out, logging_steps)[0].train()
        resumed, losses = _trainer(out, logging_steps)
        result = resumed.train(resume_from_checkpoint=os.path.join(out, "checkpoint-2"))
        assert dist.is_initialized() and dist.get_world_size() == 2, "expected two ranks"
        rows[logging_steps] = {"training_loss": result.training_loss, "losses": losses}
    gathered = gather_objects(rows)
    if dist.get_rank() == 0:
        with open(os.path.join(out_dir, "loss_window_unlogged_end.json"), "w") as fh:
            json.dump({"world_size": dist.get_world_size(), "ranks": gathered}, fh)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
