"""The spec's metric callback logs an SNR estimate next to the update sizes (optimizers.md B.8). LionA / LionAR with
`snr_correction=True` estimate the gradient signal-to-noise ratio per tensor (`state["snr"]`, whose
1/sqrt(1 + SNR) scales the step); `UpdateMetricsCallback` did not log it. It now logs `update/snr`, the median over
tensors of the estimate each measured step used, and nothing for optimizers that make none."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_ext.optim import LionA, LionAR, UpdateMetricsCallback


def _train(tmp_path, make_optimizer, steps=4, every=1):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 32, (16, 8), generator=torch.Generator().manual_seed(1))
    seen = {}  # step -> every tensor's state["snr"] right after that optimizer step, read here on its own

    class Recorder(UpdateMetricsCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
            seen[state.global_step + 1] = [s["snr"] for s in inner.state.values() if "snr" in s]
            super().on_optimizer_step(args, state, control, optimizer=optimizer, **kwargs)

    cb = Recorder(plot_path=None, every_n_steps=every)
    args = TrainingArguments(str(tmp_path), max_steps=steps, per_device_train_batch_size=4, report_to="none",
                             use_cpu=True, disable_tqdm=True, save_strategy="no", logging_steps=1)  # fmt: skip
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb],
                      optimizers=(make_optimizer(model), None))  # fmt: skip
    trainer.train()
    return cb, seen, trainer


@pytest.mark.parametrize("optimizer", [LionA, LionAR])
def test_snr_correcting_optimizers_log_their_median_snr_estimate(tmp_path, optimizer):
    cb, seen, trainer = _train(tmp_path, lambda m: optimizer(m.parameters(), lr=1e-3, snr_correction=True), every=2)
    assert [row["step"] for row in cb.history] == [2, 4]
    for row in cb.history:
        estimates = seen[row["step"]]
        assert len(estimates) >= 7  # the attention and MLP matrices, the embedding and the head at least
        assert row["update/snr"] == pytest.approx(statistics.median(estimates), rel=1e-12)
        assert math.isfinite(row["update/snr"]) and row["update/snr"] >= 0
    logged = [r for r in trainer.state.log_history if "update/snr" in r]  # the rows checkpoints keep
    assert [r["update/snr"] for r in logged] == [row["update/snr"] for row in cb.history]


def test_other_optimizers_log_no_snr(tmp_path):
    cb, _, _ = _train(tmp_path, lambda m: LionA(m.parameters(), lr=1e-3), steps=2)
    assert cb.history and all("update/snr" not in row for row in cb.history)
    cb, _, _ = _train(tmp_path / "adamw", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3), steps=2)
    assert cb.history and all("update/snr" not in row for row in cb.history)


def test_a_nan_estimate_is_not_hidden_by_the_median(tmp_path):
    """`statistics.median` sorts, and NaN compares false with everything, so a NaN estimate among the updated tensors'
    (a non-finite gradient) could come out as a finite median; the row now says NaN."""

    class NanFirst(UpdateMetricsCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
            with_estimate = [s for s in inner.state.values() if "snr" in s]
            with_estimate[0]["snr"] = float("nan")
            super().on_optimizer_step(args, state, control, optimizer=optimizer, **kwargs)

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 32, (8, 8), generator=torch.Generator().manual_seed(1))
    cb = NanFirst(plot_path=None)
    args = TrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to="none",
                             use_cpu=True, disable_tqdm=True, save_strategy="no")  # fmt: skip
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    optimizer = LionA(model.parameters(), lr=1e-3, snr_correction=True)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb], optimizers=(optimizer, None)).train()
    assert math.isnan(cb.history[0]["update/snr"])
