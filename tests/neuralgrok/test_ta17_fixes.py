"""Fixes of audit ta17 (NeuralGrokTrainer with standard TrainingArguments):

- F3: with `model_init` (what `Trainer.hyperparameter_search` uses), each `train()` re-created the model but kept the
  previous call's trained amplifier and meta-Adam state, so two identical trials trained differently, and a trial's
  `meta_learning_rate` (set on `args` before `train()`) never reached the meta-optimizer built in `__init__`;
- F4: with `restore_callback_states_from_checkpoint=True`, transformers replaced the caller's `GrokkingCallback` by a
  new instance on resume: the caller's object stopped recording at the checkpoint;
- F9: reentrant activation checkpointing was accepted with `gradient_transform="neuralgrok"` and the run died at the
  first outer step (after `outer_every` steps and their checkpoints); now refused at construction, by name."""

import os

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.neuralgrok.amplifier import NeuralAmplifier
from hf_ext.neuralgrok.trainer import GrokkingCallback, NeuralGrokConfig, NeuralGrokTrainer


def _model(trial=None):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, 16), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        gradient_transform="neuralgrok",
        per_device_train_batch_size=4,
        max_steps=4,
        outer_every=1,
        lr_scheduler_type="constant",
        learning_rate=1e-2,
        meta_learning_rate=1e-2,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        use_cpu=True,
    )
    base.update(kw)
    return NeuralGrokConfig(**base)


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


# ------------------------------------------------------------------------------------------------------------- F3
@pytest.mark.parametrize("given_amplifier", [False, True])
def test_model_init_trials_start_the_amplifier_afresh(tmp_path, given_amplifier):
    extra = {}
    if given_amplifier:
        torch.manual_seed(3)
        extra["amplifier"] = NeuralAmplifier((8,), c=1.0)
    trainer = NeuralGrokTrainer(
        model_init=_model, args=_args(tmp_path), train_dataset=_data(32, 1), outer_dataset=_data(8, 5), **extra
    )
    initial = _flat(trainer.amplifier)
    runs = []
    for _ in range(2):
        trainer.train()
        runs.append((_flat(trainer.model), _flat(trainer.amplifier), trainer.num_outer_steps))
    assert not torch.equal(runs[0][1], initial)  # the amplifier trained
    # the second call (a second trial with the same arguments) is the first one again: it used to start from the
    # first call's trained amplifier (weights differed by ~3e-6, the amplifier by more)
    assert torch.equal(runs[1][0], runs[0][0])
    assert torch.equal(runs[1][1], runs[0][1])
    assert runs[0][2] == runs[1][2] == 4  # num_outer_steps counts this call's outer steps (was 8)
    if given_amplifier:
        assert trainer.amplifier is extra["amplifier"]  # the caller's object, reset in place
    else:  # a fresh trainer's amplifier (same seed): the same start
        fresh = NeuralGrokTrainer(
            model=_model(), args=_args(tmp_path), train_dataset=_data(32, 1), outer_dataset=_data(8, 5)
        )
        assert torch.equal(_flat(fresh.amplifier), initial)


def test_a_trials_meta_options_reach_the_meta_optimizer(tmp_path, monkeypatch):
    """As `hyperparameter_search` runs a trial: `train(trial=...)`, whose `_hp_search_setup` sets the trial's values
    (`hp_space(trial)`) on `args` after `model_init`. Optuna is not installed here: a stand-in trial with the two
    attributes Trainer reads (`params`, `number`), and `hp_params`, the one call that needs the package, stood in for."""
    import types

    import transformers.integrations
    from transformers.trainer_utils import HPSearchBackend

    monkeypatch.setattr(transformers.integrations, "hp_params", lambda trial: dict(trial.params))
    trainer = NeuralGrokTrainer(
        model_init=_model, args=_args(tmp_path), train_dataset=_data(32, 1), outer_dataset=_data(8, 5)
    )
    trainer.hp_search_backend = HPSearchBackend.OPTUNA
    trainer.hp_space = lambda trial: trial.params

    def trial(**params):
        return types.SimpleNamespace(params=params, number=0)

    trainer.train(trial=trial(meta_learning_rate=0.5, meta_weight_decay=0.0, amplifier_hidden_dims=[8]))
    group = trainer.meta_optimizer.param_groups[0]
    assert group["lr"] == 0.5 and group["weight_decay"] == 0.0  # were 1e-2 and 1e-3 (built in __init__)
    assert trainer.amplifier.hidden_dims == (8,)
    assert trainer.transform_optimizer.amplifier is trainer.amplifier  # the trained one transforms the gradients
    # a trial's value is checked as the argument is
    with pytest.raises(ValueError, match=r"meta_learning_rate=-1\.0 must be a finite number > 0"):
        trainer.train(trial=trial(meta_learning_rate=-1.0))


def test_a_changed_meta_learning_rate_applies_to_the_next_model_init_train(tmp_path):
    trainer = NeuralGrokTrainer(
        model_init=_model, args=_args(tmp_path), train_dataset=_data(32, 1), outer_dataset=_data(8, 5)
    )
    trainer.train()
    trainer.args.meta_learning_rate = 0.5
    trainer.train()
    assert trainer.meta_optimizer.param_groups[0]["lr"] == 0.5  # was 1e-2


def test_without_model_init_a_second_train_keeps_training_the_amplifier(tmp_path):
    """The restart is for a re-created model only: a second `train()` on the same model continues with its
    amplifier."""
    trainer = NeuralGrokTrainer(
        model=_model(), args=_args(tmp_path), train_dataset=_data(32, 1), outer_dataset=_data(8, 5)
    )
    amplifier = trainer.amplifier
    trainer.train()
    after_first = _flat(amplifier)
    trainer.train()
    assert trainer.amplifier is amplifier and not torch.equal(_flat(amplifier), after_first)


def test_model_init_resume_restores_the_checkpoints_amplifier(tmp_path):
    args = _args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    full = NeuralGrokTrainer(model_init=_model, args=args, train_dataset=_data(32, 1), outer_dataset=_data(8, 5))
    full.train()
    expected = (_flat(full.model), _flat(full.amplifier))
    resumed = NeuralGrokTrainer(model_init=_model, args=args, train_dataset=_data(32, 1), outer_dataset=_data(8, 5))
    resumed.train()  # a first call, then a resumed one on the same trainer
    resumed.train(resume_from_checkpoint=os.path.join(tmp_path, "checkpoint-3"))
    torch.testing.assert_close(_flat(resumed.model), expected[0], rtol=0, atol=0)
    torch.testing.assert_close(_flat(resumed.amplifier), expected[1], rtol=0, atol=0)
    assert resumed.num_outer_steps == 6


# ------------------------------------------------------------------------------------------------------------- F4
@pytest.mark.parametrize("restore", [False, True])
def test_the_callers_grokking_callback_keeps_recording_after_a_resume(tmp_path, restore):
    def run(resume=None):
        args = _args(
            tmp_path,
            gradient_transform="grokfast_ema",
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            eval_strategy="steps",
            eval_steps=3,
            restore_callback_states_from_checkpoint=restore,
        )
        callback = GrokkingCallback(target=1.0, metric_key="eval_loss")  # eval_loss ~4: reached at step 3
        trainer = NeuralGrokTrainer(
            model=_model(), args=args, train_dataset=_data(32, 1), eval_dataset=_data(8, 2), callbacks=[callback]
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer, callback

    _, full = run()
    trainer, callback = run(os.path.join(tmp_path, "checkpoint-3"))
    in_trainer = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, GrokkingCallback)]
    assert in_trainer == [callback] and in_trainer[0] is callback  # was a new instance with the flag on
    assert len(callback.step_seconds) == len(full.step_seconds) == 6  # was 3: stopped at the checkpoint
    assert callback.steps_to_target == full.steps_to_target == 3


# ------------------------------------------------------------------------------------------------------------- F9
@pytest.mark.parametrize(
    "outer_gradient, flag",
    [("recompute", "activation_checkpointing"), ("next_step", "gradient_checkpointing")],  # the name and its alias
)
def test_reentrant_checkpointing_is_refused_at_construction(tmp_path, outer_gradient, flag):
    """recompute failed at the first outer step; next_step trained on wrong gradients (the outer loss's backward
    through reentrant checkpoints reached the model's own gradients: weights 3e-3 off a run without checkpointing)."""
    args = _args(tmp_path, outer_gradient=outer_gradient, **{flag: True, f"{flag}_kwargs": {"use_reentrant": True}})
    match = r"gradient_transform='neuralgrok'.*'use_reentrant': True.*'use_reentrant': False"
    with pytest.raises(ValueError, match=match):
        NeuralGrokTrainer(model=_model(), args=args, train_dataset=_data(32, 1), outer_dataset=_data(8, 5))
    assert not os.listdir(tmp_path)


def test_reentrant_checkpointing_enabled_on_the_model_is_refused(tmp_path):
    model = _model()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match=r"model's gradient checkpointing was enabled with use_reentrant=True"):
        NeuralGrokTrainer(model=model, args=_args(tmp_path), train_dataset=_data(32, 1), outer_dataset=_data(8, 5))


def test_non_reentrant_checkpointing_and_other_transforms_are_accepted(tmp_path):
    kwargs = dict(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False})
    trainer = NeuralGrokTrainer(
        model=_model(), args=_args(tmp_path, **kwargs), train_dataset=_data(32, 1), outer_dataset=_data(8, 5)
    )
    trainer.train()  # the outer step runs under non-reentrant checkpointing
    assert trainer.num_outer_steps == 4
    reentrant = dict(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": True})
    NeuralGrokTrainer(  # no outer step: nothing differentiates through the checkpoints with .grad()
        model=_model(),
        args=_args(tmp_path, gradient_transform="grokfast_ema", **reentrant),
        train_dataset=_data(32, 1),
    )


def test_recipe_refuses_reentrant_checkpointing_before_writing(tmp_path):
    from hf_ext.recipes.neuralgrok import main

    out = tmp_path / "never"
    argv = [
        "--p", "11", "--model_type", "llama", "--hidden_size", "32", "--per_device_train_batch_size", "16",
        "--report_to", "none",
        "--max_steps", "2", "--seeds", "0", "--methods", "none,neuralgrok", "--outer_fraction", "0.2",
        "--gradient_checkpointing", "true", "--gradient_checkpointing_kwargs", '{"use_reentrant": true}',
        "--output_dir", str(out),
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"--methods neuralgrok: .*use_reentrant"):
        main(argv)
    assert not out.exists()


def test_recipe_refuses_checkpointing_of_the_grok_decoder_before_writing(tmp_path):
    from hf_ext.recipes.neuralgrok import main

    out = tmp_path / "never"
    argv = [
        "--p", "11", "--hidden_size", "32", "--per_device_train_batch_size", "16", "--report_to", "none",
        "--max_steps", "2", "--seeds", "0", "--methods", "none", "--gradient_checkpointing", "true",
        "--output_dir", str(out),
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"grok_decoder model .* does not support activation checkpointing"):
        main(argv)
    assert not out.exists()
