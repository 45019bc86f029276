"""CubicNewtonTrainer on batches without labels: a ValueError naming the fix, not KeyError: 'loss' (cn33 F4)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.optim import CubicNewtonTrainer, CubicNewtonTrainingArguments


def test_batches_without_labels_are_refused_with_the_fix(tmp_path):
    cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    args = CubicNewtonTrainingArguments(
        output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none", per_device_train_batch_size=2
    )
    trainer = CubicNewtonTrainer(model=model, args=args, train_dataset=[{"input_ids": torch.arange(8)}] * 4)
    with pytest.raises(ValueError, match=r"no loss .*\['input_ids'\].*Include `labels`"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
