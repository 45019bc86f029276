"""A resume with other optimizer flags than the checkpoint's is refused by name before any step.

torch's `Optimizer.load_state_dict` restores every param-group value of the checkpoint: an hf_ext Trainer resumed
with `--weight_decay 0.5` (checkpoint: 0.1), another `--adam_beta2` or `--adam_epsilon` trained on with the
checkpoint's values (rc 0, no warning, every later checkpoint's `training_args.bin` naming the new ones), and a resume
with another `--optim` failed at the first step with a raw `KeyError: 'momentum'` (audit rs29 F1). The learning rate
(set by the scheduler every step) is not compared.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_ext.utils.resume import optimizer_group_options, refuse_changed_optimizer_options, with_loss_window


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


def _trainer(out, trainer_cls=None, **overrides):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    kw = dict(
        output_dir=str(out), learning_rate=0.05, weight_decay=0.1, max_steps=4, save_strategy="steps", save_steps=2,
        per_device_train_batch_size=4, use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
    )  # fmt: skip
    kw.update(overrides)
    cls = with_loss_window(Trainer) if trainer_cls is None else trainer_cls
    return cls(model=_TinyLM(), args=TrainingArguments(**kw), train_dataset=_data())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    _trainer(out).train()
    return out / "checkpoint-2"


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"weight_decay": 0.5}, r"--weight_decay 0.5 now, --weight_decay 0.1 in the checkpoint.*Resume with "
                                r"--weight_decay 0.1"),
        ({"adam_beta2": 0.9}, r"--adam_beta1 0.9 --adam_beta2 0.9 now, --adam_beta1 0.9 --adam_beta2 0.999 in the "
                              r"checkpoint"),
        ({"adam_epsilon": 1e-3}, r"--adam_epsilon 0.001 now, --adam_epsilon 1e-08 in the checkpoint"),
        ({"optim": "sgd"}, r"another optimizer .*--optim or --optim_args changed.*Resume with the checkpoint.s"),
    ],
)  # fmt: skip
def test_a_resume_with_other_optimizer_flags_is_refused_before_any_step(tmp_path, checkpoint, overrides, pattern):
    trainer = _trainer(tmp_path / "resumed", **overrides)
    with pytest.raises(ValueError, match=r"^resume_from_checkpoint=.*other optimizer options: " + pattern):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 2  # restored, not stepped
    assert not (tmp_path / "resumed" / "checkpoint-4").exists()


def test_fp8_trainer_refuses_it_too_and_the_same_flags_resume_exactly(tmp_path, checkpoint):
    """The pretrain recipe's Trainer (`Fp8Trainer`, also without FP8) is refused the same way; a resume with the
    checkpoint's flags (another learning rate is not an optimizer option here: the schedule check owns it) continues
    exactly."""
    from hf_ext.fp8 import Fp8Trainer

    with pytest.raises(ValueError, match=r"--weight_decay 0.2 now, --weight_decay 0.1 in the checkpoint"):
        _trainer(tmp_path / "fp8", Fp8Trainer, weight_decay=0.2).train(resume_from_checkpoint=str(checkpoint))
    full = _trainer(tmp_path / "full")
    full.train()
    resumed = _trainer(tmp_path / "same")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_the_comparison_skips_the_learning_rate_counters_and_kernel_switches():
    """The learning rate (the scheduler's), counters an optimizer keeps in its groups (schedule-free's `k`) and
    kernel switches (`foreach`) may differ; a key the restored groups gained (the scheduler's `initial_lr`) too."""
    params = [nn.Parameter(torch.zeros(2))]
    a = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, foreach=False)
    b = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.1, foreach=True)
    a.param_groups[0]["k"], b.param_groups[0]["k"] = 0, 7
    b.param_groups[0]["initial_lr"] = 1e-3
    refuse_changed_optimizer_options(optimizer_group_options(a), optimizer_group_options(b), "ckpt")
    assert optimizer_group_options(a)[0]["values"]["weight_decay"] == 0.1
    assert optimizer_group_options(object()) is None
