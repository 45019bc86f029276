"""rv34: with --push_to_hub, `NeuralGrokTrainer.save_model()` (and `push_to_hub()`) upload the output folder with the
trained amplifier in it: Trainer.save_model uploads at its end, and the amplifier used to be written only after."""

import os

import torch
import transformers

from hf_ext.neuralgrok import NeuralAmplifier, NeuralGrokConfig


def _trainer(tmp_path, **kw):
    from hf_ext.neuralgrok import (
        GrokDecoderConfig,
        GrokDecoderForCausalLM,
        NeuralGrokTrainer,
        build_arithmetic_dataset,
        split_arithmetic_dataset,
    )

    splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(
        GrokDecoderConfig(vocab_size=13, hidden_size=16, num_attention_heads=2, num_hidden_layers=1)
    )
    args = NeuralGrokConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], max_steps=2, per_device_train_batch_size=8,
        outer_every=1, amplifier_hidden_dims=[4], disable_tqdm=True, **kw,
    )  # fmt: skip
    return NeuralGrokTrainer(
        model=model,
        args=args,
        train_dataset=splits["inner"],
        outer_dataset=splits["outer"],
        amplifier=NeuralAmplifier((4,)),
    )


def test_the_uploaded_folder_holds_the_amplifier(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, save_strategy="no")
    seen = []

    def fake_push(self, *args, **kwargs):  # Trainer.push_to_hub uploads args.output_dir
        seen.append(os.path.isfile(os.path.join(self.args.output_dir, "neuralgrok_amplifier", "model.safetensors")))

    monkeypatch.setattr(transformers.Trainer, "push_to_hub", fake_push)
    monkeypatch.setattr(trainer.args, "push_to_hub", True)
    trainer.save_model()
    assert seen == [True]
    monkeypatch.setattr(trainer.args, "push_to_hub", False)
    (tmp_path / "out" / "neuralgrok_amplifier" / "model.safetensors").unlink()
    trainer.push_to_hub()
    assert seen == [True, True]
