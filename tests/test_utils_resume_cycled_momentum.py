"""A resume under a scheduler that cycles the momentum (torch's `OneCycleLR` / `CyclicLR` with `cycle_momentum=True`,
their default) is not refused as "other optimizer options" (audit rv30 F1).

Those schedulers set SGD's `momentum` / Adam's first beta every step, so the checkpoint's param groups hold that step's
value while a freshly built optimizer holds the schedule's start: hf_ext's Trainers refused a resume with the very
same code and flags (suggesting `--adam_beta1 0.921694`), which a plain `Trainer` resumes exactly. A changed
`--adam_beta2` (not scheduled) is still refused.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_ext.utils.resume import with_loss_window


class _TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 6)
        self.head = nn.Linear(6, 16)

    def forward(self, input_ids, labels=None):
        logits = self.head(torch.tanh(self.emb(input_ids)))
        return {"loss": nn.functional.cross_entropy(logits.reshape(-1, 16), labels.reshape(-1)), "logits": logits}


def _data():
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(16):
        ids = torch.randint(0, 16, (8,), generator=g)
        rows.append({"input_ids": ids, "labels": (ids * 3 + 1) % 16})
    return rows


def _trainer(out, beta2=0.999):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = _TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1, betas=(0.9, beta2))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=4)
    args = TrainingArguments(
        output_dir=str(out), max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=4,
        use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
    )  # fmt: skip
    return with_loss_window(Trainer)(model=model, args=args, train_dataset=_data(), optimizers=(optimizer, scheduler))


def test_a_momentum_cycling_scheduler_resumes_exactly_and_beta2_is_still_compared(tmp_path):
    full = _trainer(tmp_path / "full")
    full.train()
    resumed = _trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    other = _trainer(tmp_path / "other", beta2=0.99)
    with pytest.raises(ValueError, match=r"--adam_beta2 0.99 now, --adam_beta2 0.999 in the checkpoint"):
        other.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
