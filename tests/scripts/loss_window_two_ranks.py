"""2 gloo ranks: a plain `Trainer` with `LossWindowResumeMixin` resumed from a checkpoint saved between two logs
logs the uninterrupted run's losses, and the whole-run train loss is the same on both ranks and in both runs.

Usage: loss_window_two_ranks.py OUT_DIR (writes OUT_DIR/loss_window_two_ranks.json on rank 0)."""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_ext.recipes._common import whole_run_train_loss
from hf_ext.utils.distributed import gather_objects, shutdown_distributed
from hf_ext.utils.resume import with_loss_window


class TinyLM(nn.Module):
    def __init__(self, vocab=16, dim=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, labels=None):
        logits = self.head(torch.tanh(self.emb(input_ids)))
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    return [
        {"input_ids": (ids := torch.randint(0, 16, (8,), generator=g)), "labels": (ids * 3 + 1) % 16} for _ in range(n)
    ]


def _trainer(out):
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=out, use_cpu=True, report_to="none", disable_tqdm=True, seed=0, data_seed=0, learning_rate=0.05,
        per_device_train_batch_size=2, max_steps=7, logging_steps=2, save_strategy="steps", save_steps=3,
    )  # fmt: skip
    return with_loss_window(Trainer)(model=TinyLM(), args=args, train_dataset=_data())


def main(out_dir: str) -> None:
    check(out_dir)
    shutdown_distributed()


def check(out_dir: str) -> None:
    """Both runs on each rank; rank 0 writes OUT_DIR/loss_window_two_ranks.json."""
    full = _trainer(os.path.join(out_dir, "full"))
    out = full.train()
    assert dist.is_initialized() and dist.get_world_size() == 2, "expected two ranks"
    full_loss = whole_run_train_loss(full, out.training_loss)
    checkpoint = os.path.join(out_dir, "full", "checkpoint-3")
    resumed = _trainer(os.path.join(out_dir, "resumed"))
    out = resumed.train(resume_from_checkpoint=checkpoint)
    resumed_loss = whole_run_train_loss(resumed, out.training_loss)
    names = [os.path.join(checkpoint, f"loss_window_{r}.json") for r in range(2)]
    windows = [json.load(open(name)) if os.path.isfile(name) else {} for name in names]
    rows = gather_objects({"full": full_loss, "resumed": resumed_loss})
    if dist.get_rank() == 0:
        result = {
            "world_size": dist.get_world_size(),
            "full": [(r["step"], r["loss"]) for r in full.state.log_history if "loss" in r],
            "resumed": [(r["step"], r["loss"]) for r in resumed.state.log_history if "loss" in r],
            "train_loss": rows,
            "windows": windows,
        }
        with open(os.path.join(out_dir, "loss_window_two_ranks.json"), "w") as fh:
            json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1])
