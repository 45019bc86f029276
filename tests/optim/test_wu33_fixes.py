"""Audit wu33 fixes.

F1: `normalized_optimizer(name, args)` checks its values when called. `lion_ar` / `rotational_*` with plain
`TrainingArguments` (weight decay 0 by default) and no angle used to be accepted and to fail only inside
`Trainer.train()`, with a message naming neither `--weight_decay` nor the factory's `weight_decay=` override.

F2: the warmup_stable_decay schedule's options. A `num_decay_steps` in `--lr_scheduler_kwargs` longer than the run
started the decay before the warmup ended (lr 0, 0.5, then 0.3 of the peak over 8 steps with 2 warmup and 20 decay
steps), a negative one left the lr at its peak to the end; both were accepted. `--cooldown_fraction` beside another
`--lr_scheduler_type`, or beside a `num_decay_steps`, was ignored without a word (the warmup recipe refuses flags its
run would ignore).
"""

import logging

import pytest
import torch
from transformers import TrainingArguments

from hf_ext.optim import LionAR, WarmupFreeTrainer, WarmupFreeTrainingArguments, normalized_optimizer
from hf_ext.optim.warmup_trainer import wsd_schedule_arguments


def _plain_args(tmp_path, **kw):
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3, **kw)


@pytest.mark.parametrize("name", ["lion_ar", "rotational_adamw", "rotational_lion", "rotational_sgdm"])
def test_factory_refuses_a_rotation_without_weight_decay_when_called(tmp_path, name):
    with pytest.raises(ValueError, match=r"--weight_decay.*weight_decay=.*angle="):
        normalized_optimizer(name, _plain_args(tmp_path))


def test_factory_accepts_weight_decay_or_an_angle_and_builds_the_optimizer(tmp_path):
    factory, kwargs = normalized_optimizer("lion_ar", _plain_args(tmp_path), weight_decay=1.0)
    assert isinstance(factory()(torch.nn.Linear(3, 2), **kwargs), LionAR)
    normalized_optimizer("lion_ar", _plain_args(tmp_path), angle=0.01)
    normalized_optimizer("lion_ar", _plain_args(tmp_path, weight_decay=0.5))
    normalized_optimizer("lion_a", _plain_args(tmp_path))  # LionA does not rotate: weight decay 0 is fine


def test_factory_refuses_other_bad_values_by_name_when_called(tmp_path):
    with pytest.raises(ValueError, match="betas"):
        normalized_optimizer("lion_ar", _plain_args(tmp_path), weight_decay=1.0, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="angle"):
        normalized_optimizer("lion_ar", lr=1e-3, angle=3.0)


def _wf_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3, max_steps=8)
    return WarmupFreeTrainingArguments(**{**base, **kw})


@pytest.mark.parametrize("decay", [20, -3, float("nan"), "5"])
def test_an_explicit_num_decay_steps_must_fit_the_run(tmp_path, decay):
    args = _wf_args(tmp_path, warmup_steps=2, lr_scheduler_kwargs={"num_decay_steps": decay})
    with pytest.raises(ValueError, match="num_decay_steps in --lr_scheduler_kwargs"):
        wsd_schedule_arguments(args, 8)


def test_an_explicit_num_decay_steps_that_fits_is_kept(tmp_path):
    args = _wf_args(tmp_path, warmup_steps=2, lr_scheduler_kwargs={"num_decay_steps": 6})
    assert wsd_schedule_arguments(args, 8) == (2, {"num_decay_steps": 6, "decay_type": "linear"})
    # with num_stable_steps, transformers builds the schedule from them, not from the step count
    stable = _wf_args(tmp_path, warmup_steps=2, lr_scheduler_kwargs={"num_decay_steps": 20, "num_stable_steps": 3})
    assert wsd_schedule_arguments(stable, 8)[1]["num_decay_steps"] == 20


@pytest.mark.parametrize(
    "kw, why",
    [
        (dict(lr_scheduler_type="cosine"), "--lr_scheduler_type cosine does not read it"),
        (dict(lr_scheduler_kwargs={"num_decay_steps": 2}), "num_decay_steps in --lr_scheduler_kwargs"),
    ],
)
def test_an_ignored_cooldown_fraction_is_named(tmp_path, caplog, kw, why):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with caplog.at_level(logging.WARNING, logger="hf_ext.optim.warmup_trainer"):
        WarmupFreeTrainer(model=model, args=_wf_args(tmp_path, cooldown_fraction=0.25, **kw))
    assert any("--cooldown_fraction 0.25 is ignored" in r.message and why in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_ext.optim.warmup_trainer"):
        WarmupFreeTrainer(model=model, args=_wf_args(tmp_path, cooldown_fraction=0.25))  # read: no warning
    assert not any("cooldown_fraction" in r.message for r in caplog.records)

    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments, validate

    flags = ["--lr_scheduler_type", "cosine"] if "lr_scheduler_type" in kw else []
    flags += ["--lr_scheduler_kwargs", '{"num_decay_steps": 2}'] if "lr_scheduler_kwargs" in kw else []
    argv = [*flags, "--cooldown_fraction", "0.25", "--output_dir", str(tmp_path / "recipe")]
    recipe, args = parse_recipe_args((WarmupRecipeArguments, WarmupTrainingArguments), argv, resume="keep")
    with pytest.raises(ValueError, match="--cooldown_fraction 0.25 is ignored"):
        validate(recipe, args)


@pytest.mark.parametrize(
    "schedule, extra", [("constant", []), ("reduce_lr_on_plateau", ["--eval_strategy", "steps", "--eval_steps", "5"])]
)
def test_warmup_recipe_refuses_a_schedule_without_warmup_for_warmup_arms(tmp_path, schedule, extra):
    """F3: transformers builds these schedules without the warmup steps it is given, so the *_warmup arms trained
    exactly as the *_no_warmup ones and the recipe reported warmup gaps of exactly 0 (results recording
    warmup_steps 0.05 for the warmup arms)."""
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments, validate

    def check(*flags):
        argv = ["--lr_scheduler_type", schedule, *extra, *flags, "--output_dir", str(tmp_path / "recipe")]
        recipe, args = parse_recipe_args((WarmupRecipeArguments, WarmupTrainingArguments), argv, resume="keep")
        return validate(recipe, args)

    with pytest.raises(
        ValueError, match=rf"--lr_scheduler_type {schedule} has no warmup.*adamw_warmup, lion_ar_warmup"
    ):
        check()
    assert check("--arms", "adamw_no_warmup,lion_ar_no_warmup") == ["adamw_no_warmup", "lion_ar_no_warmup"]
    assert check("--warmup_fraction", "0") == [  # the user asked for no warmup: nothing is ignored
        "adamw_warmup",
        "adamw_no_warmup",
        "lion_ar_warmup",
        "lion_ar_no_warmup",
    ]


def test_factory_check_leaves_the_global_random_state_alone(tmp_path):
    # the check builds the optimizer on a probe module, whose initialisation drew from the global generator: a model
    # built after normalized_optimizer(...) under the same seed got other weights
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    normalized_optimizer("lion_ar", _plain_args(tmp_path), weight_decay=1.0)
    assert torch.equal(torch.rand(3), expected)
