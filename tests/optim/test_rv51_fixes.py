"""Audit rv51: `update/snr` of UpdateMetricsCallback takes the SNR estimates of the tensors the measured step
updated. It averaged every tensor's `state["snr"]`, also that of a tensor the step left alone (no gradient: a decoder
layer LayerDrop skipped, a step the AMP grad scaler skipped), whose estimate is from an older step and scaled no step
now."""

from __future__ import annotations

import statistics

import pytest
import torch
from datasets import Dataset
from transformers import OPTConfig, OPTForCausalLM, Trainer, TrainingArguments

from hf_ext.optim import LionA, UpdateMetricsCallback


def test_update_snr_averages_only_the_tensors_the_step_updated(tmp_path):
    torch.manual_seed(0)
    # LayerDrop 0.5 over 4 decoder layers: each training step skips some layers, whose tensors get no gradient
    cfg = OPTConfig(vocab_size=32, hidden_size=16, ffn_dim=32, num_hidden_layers=4, num_attention_heads=2,
                    max_position_embeddings=16, word_embed_proj_dim=16, layerdrop=0.5, dropout=0.0)  # fmt: skip
    model = OPTForCausalLM(cfg)
    ids = torch.randint(0, 32, (48, 8), generator=torch.Generator().manual_seed(1))
    seen = []  # per measured step: (the estimates of the tensors it stepped, the number of tensors with an estimate)

    class Recorder(UpdateMetricsCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
            self._before = {id(p): s.get("step") for p, s in inner.state.items()}
            super().on_pre_optimizer_step(args, state, control, optimizer=optimizer, **kwargs)

        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
            stepped = [s["snr"] for p, s in inner.state.items() if "snr" in s and s["step"] != self._before.get(id(p))]
            seen.append((stepped, sum("snr" in s for s in inner.state.values())))
            super().on_optimizer_step(args, state, control, optimizer=optimizer, **kwargs)

    cb = Recorder(plot_path=None)
    args = TrainingArguments(str(tmp_path), max_steps=12, per_device_train_batch_size=4, report_to="none",
                             use_cpu=True, disable_tqdm=True, save_strategy="no", logging_steps=1, seed=0)  # fmt: skip
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    optimizer = LionA(model.parameters(), lr=1e-3, snr_correction=True)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb], optimizers=(optimizer, None)).train()
    assert len(cb.history) == len(seen) == 12
    partial = [k for k, (stepped, with_estimate) in enumerate(seen) if len(stepped) < with_estimate]
    assert partial  # steps where a skipped layer kept an older estimate (was averaged in)
    for row, (stepped, _) in zip(cb.history, seen):
        assert row["update/snr"] == pytest.approx(statistics.median(stepped), rel=1e-12)
