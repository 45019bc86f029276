"""A checkpoint saved again over a complete one of the same step (a run redoing its last steps from an earlier
checkpoint, as the finished-run refusal suggests) is incomplete until its new `trainer_state.json` is written.

Before, the old `trainer_state.json` stayed while the other files were overwritten in place: a save interrupted there
(a kill, a full disk) left a folder that still looked complete, and the next bare `--resume_from_checkpoint` picked
it and failed in torch's loader ("PytorchStreamReader failed reading zip archive") or mixed two saves. (rs38 F1)
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from hf_ext.utils.resume import last_complete_checkpoint, with_loss_window


class _TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 6)
        self.head = nn.Linear(6, 16)

    def forward(self, input_ids, labels=None):
        logits = self.head(torch.tanh(self.emb(input_ids)))
        return {"loss": nn.functional.cross_entropy(logits.reshape(-1, 16), labels.reshape(-1)), "logits": logits}


def _trainer(out):
    from transformers import Trainer, TrainingArguments

    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(16):
        ids = torch.randint(0, 16, (8,), generator=g)
        data.append({"input_ids": ids, "labels": (ids * 3 + 1) % 16})
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=str(out), use_cpu=True, report_to="none", disable_tqdm=True, seed=0, per_device_train_batch_size=4,
        max_steps=4, save_strategy="steps", save_steps=2, learning_rate=0.05,
    )  # fmt: skip
    return with_loss_window(Trainer)(model=_TinyLM(), args=args, train_dataset=data)


def test_a_save_interrupted_over_a_complete_checkpoint_leaves_it_incomplete(tmp_path, monkeypatch):
    _trainer(tmp_path).train()
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        if isinstance(f, str) and f.endswith(os.path.join("checkpoint-4", "optimizer.pt")):
            with open(f, "wb") as fh:
                fh.write(b"PK")  # what was written when the process died
            raise KeyboardInterrupt
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):  # redo steps 3-4 from checkpoint-2; the re-save of checkpoint-4 dies
        _trainer(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    monkeypatch.setattr(torch, "save", save)
    assert not (tmp_path / "checkpoint-4" / "trainer_state.json").exists()
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    _trainer(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))  # and a resume completes it
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
