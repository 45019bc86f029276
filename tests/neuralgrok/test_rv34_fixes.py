"""rv34: with --push_to_hub, `NeuralGrokTrainer.save_model()` (and `push_to_hub()`) upload the output folder with the
trained amplifier in it: Trainer.save_model uploads at its end, and the amplifier used to be written only after."""

import os

import transformers


def test_the_uploaded_folder_holds_the_amplifier(tmp_path, monkeypatch, tiny_amplified_trainer):
    trainer = tiny_amplified_trainer(tmp_path, save_strategy="no")
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
