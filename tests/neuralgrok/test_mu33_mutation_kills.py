"""Mutation kills (mu33) for the ng33 changes: the `outer_gradient` resume comparison applies to neuralgrok runs only,
`NeuralGrokTrainer.save_model(dir)` writes the amplifier into `dir` (not into a checkpoint, not on a process that does
not save), and `NeuralAmplifier.save_pretrained` round-trips every constructor argument."""

import os

import pytest
import torch

from hf_ext.neuralgrok import NeuralAmplifier, NeuralGrokConfig
from hf_ext.neuralgrok.trainer import resume_option_mismatches


def _args(tmp_path, **kw):
    return NeuralGrokConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **kw)


@pytest.mark.parametrize("transform", ["none", "grokfast_ema", "neuralgrok"])
def test_outer_gradient_is_compared_for_neuralgrok_checkpoints_only(tmp_path, transform):
    kw = {"gradient_transform": transform}
    info = {"gradient_transform": transform, "outer_gradient": "recompute"}
    same = resume_option_mismatches(info, None, _args(tmp_path, **kw))
    other = resume_option_mismatches(info, None, _args(tmp_path, outer_gradient="next_step", **kw))
    expected = [("outer_gradient", "recompute", "next_step")] if transform == "neuralgrok" else []
    assert [m for m in other if m not in same] == expected


def test_save_model_writes_the_amplifier_into_the_folder_it_is_given_and_not_into_checkpoints(
    tmp_path, tiny_amplified_trainer
):
    trainer = tiny_amplified_trainer(tmp_path, save_strategy="steps", save_steps=2)
    trainer.train()
    assert not os.path.exists(tmp_path / "out" / "checkpoint-2" / "neuralgrok_amplifier")  # it holds it already
    trainer.save_model(str(tmp_path / "final"))
    back = NeuralAmplifier.from_pretrained(str(tmp_path / "final" / "neuralgrok_amplifier"))
    assert all(torch.equal(v, trainer.amplifier.state_dict()[k]) for k, v in back.state_dict().items())
    assert not os.path.exists(tmp_path / "out" / "neuralgrok_amplifier")


def test_save_model_writes_no_amplifier_on_a_process_that_does_not_save(tmp_path, monkeypatch, tiny_amplified_trainer):
    trainer = tiny_amplified_trainer(tmp_path, save_strategy="no")
    monkeypatch.setattr(type(trainer.args), "should_save", property(lambda self: False))
    trainer.save_model(str(tmp_path / "final"))
    assert not os.path.exists(tmp_path / "final" / "neuralgrok_amplifier")


def test_save_pretrained_round_trips_every_constructor_argument(tmp_path):
    amp = NeuralAmplifier((5, 3), c=2.0, softmax_dim=-1, dropout=0.25, eps=1e-4, chunk_size=77)
    amp.save_pretrained(str(tmp_path / "amp"))
    back = NeuralAmplifier.from_pretrained(str(tmp_path / "amp"))
    assert back.init_config() == amp.init_config() == {
        "hidden_dims": [5, 3], "c": 2.0, "softmax_dim": -1, "dropout": 0.25, "eps": 1e-4, "chunk_size": 77,
    }  # fmt: skip
    assert all(torch.equal(v, amp.state_dict()[k]) for k, v in back.state_dict().items())


def test_save_pretrained_uses_an_explicit_config(tmp_path):
    NeuralAmplifier((5,), c=2.0).save_pretrained(str(tmp_path / "amp"), config={"hidden_dims": [5], "c": 3.0})
    assert NeuralAmplifier.from_pretrained(str(tmp_path / "amp")).c == 3.0


def test_a_checkpoint_without_the_recorded_outer_gradient_is_compared_as_recompute(tmp_path):
    # a neuralgrok checkpoint written before outer_gradient was recorded: train() reads it as "recompute", so the
    # recipe's early comparison must too (it let such a checkpoint through, to be refused in train() after the
    # command's earlier runs had trained)
    info = {"gradient_transform": "neuralgrok"}
    kw = {"gradient_transform": "neuralgrok"}
    assert ("outer_gradient", "recompute", "next_step") in resume_option_mismatches(
        info, None, _args(tmp_path, outer_gradient="next_step", **kw)
    )
    assert not [m for m in resume_option_mismatches(info, None, _args(tmp_path, **kw)) if m[0] == "outer_gradient"]
