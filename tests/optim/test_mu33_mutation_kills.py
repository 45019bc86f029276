"""Mutation kills (mu33) for the cn33 / wu33 changes: CubicNewtonTrainer's dense limit is CubicNewton's (trainable
parameters, `> dense_max_dim`), a model output that is neither a mapping nor has `.loss` is refused by name; the
warmup_stable_decay checks keep a 0-step decay, count the warmup, refuse an infinite decay; the warmup recipe's
no-warmup schedules are exactly transformers' (greedy refused, schedules with warmup accepted)."""

import math

import pytest
import torch
from torch import nn

from hf_ext.optim import CubicNewtonTrainer, CubicNewtonTrainingArguments, WarmupFreeTrainingArguments
from hf_ext.optim.warmup_trainer import wsd_schedule_arguments


class _Flat(nn.Module):
    def __init__(self, trainable, frozen=0):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(trainable))
        self.frozen = nn.Parameter(torch.zeros(frozen), requires_grad=False)

    def forward(self, x, labels=None):
        return {"loss": ((self.w.sum() + self.frozen.sum()) * x.float().mean() - 1.0) ** 2}


def _cubic_args(out, hessian="dense"):
    return CubicNewtonTrainingArguments(
        output_dir=str(out), cubic_hessian=hessian, cubic_solver="exact", max_steps=1, use_cpu=True, report_to="none"
    )


def test_cubic_trainer_dense_limit_is_cubic_newtons_on_trainable_parameters(tmp_path):
    from hf_ext.optim import CubicNewton

    limit = 4096
    CubicNewton([nn.Parameter(torch.zeros(limit))], hessian="dense", solver="exact")  # the optimizer's own limit
    with pytest.raises(ValueError, match="dense_max_dim"):
        CubicNewton([nn.Parameter(torch.zeros(limit + 1))], hessian="dense", solver="exact")
    CubicNewtonTrainer(model=_Flat(limit), args=_cubic_args(tmp_path / "a"))  # at the limit: accepted
    CubicNewtonTrainer(model=_Flat(100, frozen=10_000), args=_cubic_args(tmp_path / "b"))  # frozen ones not counted
    with pytest.raises(ValueError, match="--cubic_hessian dense .* 4097 trainable"):
        CubicNewtonTrainer(model=_Flat(limit + 1), args=_cubic_args(tmp_path / "c"))


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def forward(self, input_ids, labels=None):
        return (self.w.sum() * input_ids.float().mean(),)


def test_cubic_trainer_refuses_an_output_without_loss_attribute_by_name(tmp_path):
    args = CubicNewtonTrainingArguments(
        output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none", per_device_train_batch_size=2
    )
    data = [{"input_ids": torch.arange(4), "labels": torch.arange(4)}] * 4
    trainer = CubicNewtonTrainer(model=_TupleOut(), args=args, train_dataset=data)
    with pytest.raises(ValueError, match="no loss"):
        trainer.train()


def _wf_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3, max_steps=8)
    return WarmupFreeTrainingArguments(**{**base, **kw})


def test_wsd_num_decay_steps_zero_is_kept(tmp_path):
    args = _wf_args(tmp_path, warmup_steps=2, lr_scheduler_kwargs={"num_decay_steps": 0})
    assert wsd_schedule_arguments(args, 8) == (2, {"num_decay_steps": 0, "decay_type": "linear"})


def test_wsd_fit_counts_the_warmup(tmp_path):
    args = _wf_args(tmp_path, warmup_steps=2, lr_scheduler_kwargs={"num_decay_steps": 7})  # 2 + 7 > 8
    with pytest.raises(ValueError, match=r"warmup \(2\) \+ decay \(7\) steps exceed the 8"):
        wsd_schedule_arguments(args, 8)


def test_wsd_infinite_num_decay_steps_is_refused_even_with_num_stable_steps(tmp_path):
    kwargs = {"num_decay_steps": math.inf, "num_stable_steps": 3}
    with pytest.raises(ValueError, match="num_decay_steps in --lr_scheduler_kwargs must be a number"):
        wsd_schedule_arguments(_wf_args(tmp_path, warmup_steps=2, lr_scheduler_kwargs=kwargs), 8)


def _validate(tmp_path, *flags):
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments, validate

    argv = [*flags, "--output_dir", str(tmp_path / "recipe")]
    return validate(*parse_recipe_args((WarmupRecipeArguments, WarmupTrainingArguments), argv, resume="keep"))


def test_warmup_recipe_refuses_greedy_for_warmup_arms(tmp_path):
    with pytest.raises(ValueError, match="--lr_scheduler_type greedy has no warmup"):
        _validate(tmp_path, "--lr_scheduler_type", "greedy", "--eval_strategy", "steps", "--eval_steps", "5")


@pytest.mark.parametrize("schedule", ["constant_with_warmup", "cosine", "linear"])
def test_warmup_recipe_accepts_schedules_with_warmup(tmp_path, schedule):
    assert "adamw_warmup" in _validate(tmp_path, "--lr_scheduler_type", schedule)
