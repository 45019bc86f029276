"""Audit ng16: the amplifier broadcast from rank 0, a ready gradient-transform wrapper passed as `optimizers=`,
GrokkingCallback's metric key and argument types, the virtual lr of next_step outer steps, and range checks of
GrokDecoderConfig, stability_after_target and the recipe's --strong_weight_decay."""

import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerControl

import hf_ext.neuralgrok.trainer as ng_trainer
from hf_ext.neuralgrok import (
    GradFilterOptimizer,
    GradNormOptimizer,
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    GrokkingCallback,
    NeuralAmplifier,
    NeuralGrokConfig,
    NeuralGrokOptimizer,
    NeuralGrokTrainer,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
    stability_after_target,
)

P = 11


@pytest.fixture(scope="module")
def splits():
    return split_arithmetic_dataset(build_arithmetic_dataset("a+b", P), 0.5, 0.2, seed=0)


def make_model():
    torch.manual_seed(0)
    return GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=P + 2, hidden_size=32))


def make_args(out, **kw):
    base = dict(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=4, outer_every=2, amplifier_hidden_dims=[8],
        meta_learning_rate=1e-2, logging_steps=2, seed=0, use_cpu=True, disable_tqdm=True, report_to="none",
        save_strategy="no",
    )  # fmt: skip
    base.update(kw)
    return NeuralGrokConfig(**base)


def make_trainer(args, splits, model=None, **kw):
    neuralgrok = args.gradient_transform == "neuralgrok"
    return NeuralGrokTrainer(
        model=model if model is not None else make_model(),
        args=args,
        train_dataset=splits["inner" if neuralgrok else "train"],
        outer_dataset=splits["outer"] if neuralgrok else None,
        **kw,
    )


# ---------------------------------------------------------------- 1. amplifier broadcast from rank 0
# test_two_ranks_take_rank_0s_amplifier is in test_scale_out.py: one launch runs every 2-rank check of NeuralGrok


# ---------------------------------------------------------------- 2. a ready wrapper passed as optimizers=
@pytest.mark.parametrize("outer_gradient", ["recompute", "next_step"])
def test_a_ready_neuralgrok_optimizer_is_the_one_trained_logged_and_checkpointed(splits, tmp_path, outer_gradient):
    """`optimizers=(NeuralGrokOptimizer(Adam, amp), None)` transformed every gradient with `amp` while the outer step
    trained and checkpointed the trainer's own amplifier: `amp` never moved, and no AGE was logged."""
    model = make_model()
    torch.manual_seed(5)
    amp = NeuralAmplifier((8,))
    wrapper = NeuralGrokOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), amp, clip_norm=2.0)
    before = [p.detach().clone() for p in amp.parameters()]
    args = make_args(tmp_path, outer_gradient=outer_gradient, max_steps=5, save_strategy="steps", save_steps=5)
    trainer = make_trainer(args, splits, model=model, optimizers=(wrapper, None))
    assert trainer.amplifier is amp and trainer.transform_optimizer is wrapper
    trainer.train()
    assert trainer.num_outer_steps == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, amp.parameters())), "the amplifier in use was not trained"
    assert wrapper.num_transforms == 5
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all("age_raw" in e and "grad_norm_transformed" in e for e in logged)
    ckpt = tmp_path / "checkpoint-5"
    saved = load_file(str(ckpt / ng_trainer.AMPLIFIER_NAME))
    assert all(torch.equal(saved[k], v) for k, v in amp.state_dict().items())
    assert (ckpt / f"{ng_trainer.TRANSFORM_STATE_PREFIX}.json").exists()
    info = json.loads((ckpt / ng_trainer.TRAINER_STATE_NAME).read_text())
    assert info["amplifier_clip_norm"] == 2.0  # the wrapper's own option
    # a second train() on the same trainer keeps the wrapper (no second wrapping) and trains the same amplifier
    trainer.train()
    assert trainer.transform_optimizer is wrapper and wrapper.num_transforms == 10
    assert ng_trainer._find_transform(trainer.optimizer) is wrapper


def test_a_ready_normalize_wrapper_is_logged_and_its_c_recorded(splits, tmp_path):
    model = make_model()
    wrapper = GradNormOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), c=3.0)
    args = make_args(tmp_path, gradient_transform="normalize", save_strategy="steps", save_steps=4)
    trainer = make_trainer(args, splits, model=model, optimizers=(wrapper, None))
    trainer.train()
    assert trainer.transform_optimizer is wrapper
    assert any("age_transformed" in e for e in trainer.state.log_history)
    info = json.loads((tmp_path / "checkpoint-4" / ng_trainer.TRAINER_STATE_NAME).read_text())
    assert info["amplifier_c"] == 3.0


def test_a_ready_wrapper_that_contradicts_the_arguments_is_refused(splits, tmp_path):
    model = make_model()
    amp = NeuralAmplifier((8,))
    wrapper = NeuralGrokOptimizer(torch.optim.Adam(model.parameters()), amp)
    with pytest.raises(ValueError, match="amplifier= is not the amplifier of the NeuralGrokOptimizer"):
        make_trainer(
            make_args(tmp_path), splits, model=model, optimizers=(wrapper, None), amplifier=NeuralAmplifier((8,))
        )
    with pytest.raises(ValueError, match=r"NeuralGrokOptimizer \(gradient_transform='neuralgrok'\).*'normalize'"):
        make_trainer(
            make_args(tmp_path, gradient_transform="normalize"), splits, model=model, optimizers=(wrapper, None)
        )
    grokfast = GradFilterOptimizer(torch.optim.Adam(model.parameters()), mode="ma", window=3)
    with pytest.raises(ValueError, match=r"set gradient_transform='grokfast_ma'"):
        make_trainer(make_args(tmp_path), splits, model=model, optimizers=(grokfast, None))
    # the same amplifier object named twice is fine
    trainer = make_trainer(make_args(tmp_path), splits, model=model, optimizers=(wrapper, None), amplifier=amp)
    assert trainer.amplifier is amp
    # a wrapper already hooked by another trainer's next_step outer step
    make_trainer(make_args(tmp_path, outer_gradient="next_step"), splits, model=model, optimizers=(wrapper, None))
    with pytest.raises(ValueError, match="before_transform hook"):
        make_trainer(make_args(tmp_path), splits, model=model, optimizers=(wrapper, None))


# ---------------------------------------------------------------- 3. GrokkingCallback
def test_grokking_callback_finds_a_metric_key_without_the_eval_prefix():
    state = SimpleNamespace(global_step=40)
    cb = GrokkingCallback(target=0.95, metric_key="accuracy", stop_on_target=True)
    control = TrainerControl()
    cb.on_evaluate(None, state, control, metrics={"eval_accuracy": 1.0, "eval_loss": 0.01})
    assert cb.steps_to_target == 40 and control.should_training_stop
    # an exact key with another prefix (evaluate(metric_key_prefix="test")) still works
    cb = GrokkingCallback(target=0.95, metric_key="test_accuracy")
    cb.on_evaluate(None, state, TrainerControl(), metrics={"test_accuracy": 0.96})
    assert cb.steps_to_target == 40


def test_grokking_callback_warns_once_when_the_metric_is_missing(caplog):
    cb = GrokkingCallback(metric_key="eval_acc")
    with caplog.at_level(logging.WARNING, logger="hf_ext.neuralgrok.trainer"):
        for step in (10, 20):
            cb.on_evaluate(None, SimpleNamespace(global_step=step), TrainerControl(), metrics={"eval_accuracy": 1.0})
    warnings = [r for r in caplog.records if "GrokkingCallback" in r.getMessage()]
    assert len(warnings) == 1 and "'eval_acc'" in warnings[0].getMessage()
    assert "eval_accuracy" in warnings[0].getMessage()
    assert cb.steps_to_target is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stop_on_target": "false"}, "stop_on_target='false' must be a bool"),
        ({"stop_on_target": 1}, "stop_on_target=1 must be a bool"),
        ({"target": True}, "target=True must be a number"),
        ({"target": "0.9"}, "target='0.9' must be a number"),
        ({"target": float("nan")}, "target=nan"),
        ({"metric_key": ""}, "metric_key='' must be a metric name"),
        ({"metric_key": None}, "metric_key=None must be a metric name"),
    ],
)
def test_grokking_callback_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GrokkingCallback(**kwargs)


# ---------------------------------------------------------------- 4. virtual lr of the next_step outer step
def _virtual_lrs(monkeypatch, run):
    seen = []
    real = ng_trainer.amplifier_outer_step

    def spy(*a, virtual_lr, **kw):
        seen.append(virtual_lr)
        return real(*a, virtual_lr=virtual_lr, **kw)

    monkeypatch.setattr(ng_trainer, "amplifier_outer_step", spy)
    run()
    monkeypatch.setattr(ng_trainer, "amplifier_outer_step", real)
    return seen


def test_both_outer_gradients_use_the_lr_of_the_last_real_step(splits, tmp_path, monkeypatch):
    """With outer_every=1 and a warm-up from 0 over 2 steps (lr 0, 5e-4, 1e-3, ...) each outer step's virtual step
    size is the lr of the step just taken, the base lr where that is 0: next_step used the following step's lr
    (5e-4, 1e-3, 1e-3), skipping the base-lr fallback."""
    lrs = {}
    for mode in ("recompute", "next_step"):
        args = make_args(tmp_path / mode, outer_gradient=mode, outer_every=1, warmup_steps=2, learning_rate=1e-3)
        lrs[mode] = _virtual_lrs(monkeypatch, make_trainer(args, splits).train)
    assert lrs["recompute"] == pytest.approx([1e-3, 5e-4, 1e-3, 1e-3])
    assert lrs["next_step"] == lrs["recompute"][:3]  # the outer step after step 4 would run in step 5


def test_a_pending_next_step_outer_step_keeps_its_lr_across_a_resume(splits, tmp_path, monkeypatch):
    """Checkpoint-2 holds a next_step outer step due after step 2 (lr 1e-4 in a 10-step warm-up to 1e-3); the resumed
    run takes it with that lr, as the uninterrupted run does, and ends with the same amplifier and model."""

    def args(out):
        return make_args(out, outer_gradient="next_step", warmup_steps=10, learning_rate=1e-3, save_strategy="steps",
                         save_steps=2, max_steps=6)  # fmt: skip

    full = make_trainer(args(tmp_path / "full"), splits)
    seen_full = _virtual_lrs(monkeypatch, full.train)
    info = json.loads((tmp_path / "full" / "checkpoint-2" / ng_trainer.TRAINER_STATE_NAME).read_text())
    assert info["outer_step_due"] and info["outer_step_lr"] == pytest.approx(1e-4)
    resumed = make_trainer(args(tmp_path / "resumed"), splits)
    seen_resumed = _virtual_lrs(
        monkeypatch, lambda: resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    )
    assert seen_full == pytest.approx([1e-4, 3e-4]) and seen_resumed == seen_full  # lr of steps 2 and 4
    for a, b in zip(
        [*full.amplifier.parameters(), *full.model.parameters()],
        [*resumed.amplifier.parameters(), *resumed.model.parameters()],
    ):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- 5. ranges
@pytest.mark.parametrize(
    "name, value",
    [
        ("num_hidden_layers", -1),
        ("num_hidden_layers", 0),
        ("num_attention_heads", 0),
        ("mlp_ratio", 0),
        ("max_position_embeddings", 0),
        ("num_hidden_layers", True),
        ("mlp_ratio", 2.0),
        ("hidden_size", 0),
    ],
)
def test_grok_decoder_config_refuses_non_positive_counts(name, value):
    with pytest.raises(ValueError, match=f"GrokDecoderConfig.{name}={value!r} must be a positive int"):
        GrokDecoderConfig(**{name: value})
    config = GrokDecoderConfig(vocab_size=13, hidden_size=32)
    setattr(config, name, value)  # changed after it was built: the model refuses it
    with pytest.raises(ValueError, match=f"{name}={value!r} must be a positive int"):
        GrokDecoderForCausalLM(config)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"drop_margin": -1.0}, "drop_margin=-1.0 must be a finite number >= 0"),
        ({"drop_margin": math.inf}, "drop_margin=inf"),
        ({"spike_factor": math.nan}, "spike_factor=nan must be a finite number > 0"),
        ({"spike_factor": 0}, "spike_factor=0 must be a finite number > 0"),
        ({"spike_floor": -0.5}, "spike_floor=-0.5 must be a finite number >= 0"),
        ({"spike_floor": True}, "spike_floor=True"),
    ],
)
def test_stability_after_target_refuses_out_of_range_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stability_after_target([20, 40, 60], [0.96, 0.97, 0.98], [20, 40, 60], [0.01, 5.0, 0.01], **kwargs)


def test_stability_after_target_in_range_still_counts():
    r = stability_after_target([20, 40, 60], [0.96, 0.80, 0.98], [20, 40, 60], [0.01, 5.0, 0.01], drop_margin=0.0)
    assert r["accuracy_drops"] == 1 and r["loss_spikes"] == 1


def test_recipe_refuses_infinite_strong_weight_decay_by_its_own_name(tmp_path):
    from hf_ext.recipes import neuralgrok
    from hf_ext.recipes._common import parse_recipe_args

    out = tmp_path / "out"
    parsed = parse_recipe_args(
        (neuralgrok.GrokTaskArguments, neuralgrok.GrokModelArguments, neuralgrok.GrokTrainingArguments),
        ["--p", "11", "--methods", "none_strong_wd", "--strong_weight_decay", "inf", "--output_dir", str(out)],
    )
    with pytest.raises(ValueError, match=r"--strong_weight_decay=inf must be a finite number >= 0"):
        neuralgrok.validate_args(*parsed)
    assert not out.exists()
