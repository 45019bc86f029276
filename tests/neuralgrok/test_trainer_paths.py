"""NeuralGrokTrainer on ordinary Trainer paths: a second `train()` on the same object (also a resume) transforms each
step's gradient once."""

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.neuralgrok.optim import GradientTransformOptimizer
from hf_ext.neuralgrok.trainer import NeuralGrokConfig, NeuralGrokTrainer


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(cfg)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, 16), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


@pytest.mark.parametrize("transform", ["grokfast_ema", "neuralgrok"])
def test_resume_on_the_same_trainer_object_transforms_once_per_step(tmp_path, transform):
    """`train()` then `train(resume_from_checkpoint=checkpoint-2)` on the same trainer ends on the first run's weights.
    The second call wrapped accelerate's `AcceleratedOptimizer` in another transform optimizer, so every gradient was
    transformed twice (grokfast_ema: weights 2e-2 off)."""
    args = NeuralGrokConfig(
        output_dir=str(tmp_path), gradient_transform=transform, per_device_train_batch_size=4, max_steps=4,
        warmup_steps=0, lr_scheduler_type="constant", outer_every=1, save_strategy="steps", save_steps=2,
        report_to="none", disable_tqdm=True, seed=0, data_seed=0, use_cpu=True,
    )  # fmt: skip
    extra = {"outer_dataset": _data(8, 5)} if transform == "neuralgrok" else {}
    trainer = NeuralGrokTrainer(model=_model(), args=args, train_dataset=_data(32, 1), **extra)
    trainer.train()
    first = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    chain, opt = [], trainer.optimizer
    while opt is not None:
        chain.append(opt)
        opt = getattr(opt, "optimizer", None) or getattr(opt, "inner", None)
    assert sum(isinstance(o, GradientTransformOptimizer) for o in chain) == 1, [type(o).__name__ for o in chain]
    for a, b in zip(first, trainer.model.parameters()):
        torch.testing.assert_close(b.detach(), a, rtol=0, atol=1e-6)
