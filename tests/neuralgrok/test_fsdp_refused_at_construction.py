"""`gradient_transform='neuralgrok'` under the Trainer's FSDP is refused when the trainer is built. transformers 5.x
creates the optimizer before FSDP2 shards the model, so the DTensor check of `create_optimizer` passed and the
refusal came from the first outer step, after `outer_every` optimizer steps (and possibly checkpoints)."""

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer

from hf_ext.neuralgrok import NeuralGrokConfig, NeuralGrokTrainer


def _fsdp_enabled(monkeypatch):
    """What accelerate's FSDP plugin sets on a GPU machine (on CPU accelerate drops the plugin)."""
    original = Trainer.create_accelerator_and_postprocess

    def with_fsdp(self):
        original(self)
        self.is_fsdp_enabled = True

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", with_fsdp)


def _build(tmp_path, transform):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2))  # fmt: skip
    ids = torch.randint(3, 64, (8, 12), generator=torch.Generator().manual_seed(1)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = NeuralGrokConfig(output_dir=str(tmp_path), gradient_transform=transform, report_to="none", use_cpu=True,
                            max_steps=1, save_strategy="no")  # fmt: skip
    outer = data if transform == "neuralgrok" else None
    return NeuralGrokTrainer(model=model, args=args, train_dataset=data, outer_dataset=outer)


def test_the_amplifier_is_refused_under_fsdp_when_the_trainer_is_built(tmp_path, monkeypatch):
    _fsdp_enabled(monkeypatch)
    with pytest.raises(ValueError, match=r"gradient_transform='neuralgrok' does not run under FSDP"):
        _build(tmp_path, "neuralgrok")


def test_the_other_transforms_are_built_under_fsdp(tmp_path, monkeypatch):
    _fsdp_enabled(monkeypatch)
    assert _build(tmp_path, "grokfast_ema").is_fsdp_enabled
