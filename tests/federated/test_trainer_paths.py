"""PrivateTrainer on ordinary Trainer paths: a second train() on the same object draws fresh Poisson batches, the
accountant is part of a checkpoint before it looks complete, and losses DP-SGD would bypass are refused."""

import json
import os

import pytest
import torch
from datasets import Dataset

from hf_ext.federated.trainer import ACCOUNTANT_FILE, PrivateTrainer, PrivateTrainingArguments

from .conftest import tiny_llama


def _data(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, 12), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _args(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=6, max_grad_norm=0, dp_clip_norm=1.0,
                dp_noise_multiplier=1.0, learning_rate=1e-3, report_to="none", disable_tqdm=True, save_strategy="no",
                use_cpu=True, seed=0, data_seed=0)  # fmt: skip
    return PrivateTrainingArguments(**{**base, **kw})


class _Recording(PrivateTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append(sorted(map(tuple, inputs["input_ids"].tolist())))
        return super().training_step(model, inputs, num_items_in_batch)


@pytest.mark.parametrize("noise_seed", [None, 7])
def test_a_second_train_call_draws_fresh_batches(tmp_path, noise_seed):
    """The accountant composes a second call's steps with the first's as independent Poisson draws; the second call
    replayed the first call's batches (the seed and epoch restarted), so epsilon was under-reported (3.6 vs 5.8)."""
    trainer = _Recording(model=tiny_llama(64), args=_args(tmp_path, dp_noise_seed=noise_seed), train_dataset=_data())
    trainer.seen = []
    trainer.train()
    first, trainer.seen = trainer.seen, []
    trainer.train()
    assert len(first) == len(trainer.seen) == 6 and trainer.seen != first
    assert trainer.privacy_spent()["dp_steps"] == 12


def test_resume_is_exact_with_a_noise_seed_also_after_a_second_call(tmp_path):
    """With dp_noise_seed, resuming a later call's checkpoint continues that call's draws (its key is stored with the
    accountant): the weights equal the uninterrupted call's."""
    args = _args(tmp_path / "a", dp_noise_seed=3, max_steps=4, save_strategy="steps", save_steps=2)
    trainer = PrivateTrainer(model=tiny_llama(64), args=args, train_dataset=_data())
    trainer.train()
    trainer.train()  # the second call writes checkpoint-2 and checkpoint-4 again, with its own key
    final = [p.detach().clone() for p in trainer.model.parameters()]
    assert json.loads((tmp_path / "a" / "checkpoint-2" / ACCOUNTANT_FILE).read_text())["sampling_call"] == 1
    other = PrivateTrainer(model=tiny_llama(64), args=args, train_dataset=_data())
    other.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for a, b in zip(final, other.model.parameters()):
        torch.testing.assert_close(b.detach(), a, rtol=0, atol=1e-7)


def test_accountant_is_written_before_the_checkpoint_looks_complete_and_required_on_resume(tmp_path, monkeypatch):
    """privacy_accountant.json was written after trainer_state.json (a save killed in between left a complete-looking
    checkpoint without it), and resuming from a checkpoint without it restarted the accounting at 0 steps."""
    import hf_ext.utils.io as io

    order = []
    replace = os.replace
    monkeypatch.setattr(io.os, "replace", lambda a, b: order.append(os.path.basename(b)) or replace(a, b))
    real_open = open

    def spy(path, mode="r", *a, **k):
        if "w" in mode and str(path).endswith("trainer_state.json"):
            order.append("trainer_state.json")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    args = _args(tmp_path / "a", max_steps=2, save_strategy="steps", save_steps=2)
    PrivateTrainer(model=tiny_llama(64), args=args, train_dataset=_data()).train()
    monkeypatch.undo()
    assert order.index(ACCOUNTANT_FILE) < order.index("trainer_state.json")
    os.remove(tmp_path / "a" / "checkpoint-2" / ACCOUNTANT_FILE)
    resumed = PrivateTrainer(model=tiny_llama(64), args=_args(tmp_path / "b", max_steps=4), train_dataset=_data())
    with pytest.raises(ValueError, match="restart the privacy accounting"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))


def test_losses_dp_sgd_would_bypass_are_refused(tmp_path):
    """label_smoothing_factor and a compute_loss_func changed evaluate() but not DP-SGD training (weights identical)."""
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        _args(tmp_path, label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="compute_loss_func"):
        PrivateTrainer(model=tiny_llama(64), args=_args(tmp_path), train_dataset=_data(),
                       compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.loss)  # fmt: skip
