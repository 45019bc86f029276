"""Mutation run 16: a trapezoid with no constant phase is valid; constant schedules may be resumed with more steps.

- `TrapezoidSchedule(N, warmup_steps=w, cooldown_fraction=c)` needs `w + round(c * N) <= N`: equality (warmup straight
  into cooldown) is a valid schedule, not an error.
- `schedule_record` leaves out the step count of the schedules that do not depend on it (`constant`,
  `constant_with_warmup`, `reduce_lr_on_plateau`), so a resume that extends `--max_steps` is accepted for them, and
  refused for a schedule whose shape depends on the step count (`linear`).
"""

import pytest
import torch

from hf_ext.optim import WarmupFreeTrainer, WarmupFreeTrainingArguments
from hf_ext.optim.schedules import TrapezoidSchedule, get_trapezoid_schedule
from hf_ext.optim.warmup_trainer import changed_resume_options, check_checkpoint_options, schedule_record


def test_trapezoid_without_a_constant_phase_is_valid():
    s = TrapezoidSchedule(100, warmup_steps=50, cooldown_fraction=0.5)
    assert (s.warmup_steps, s.cooldown_steps) == (50, 50)
    assert [s(i) for i in (0, 49, 50, 99)] == pytest.approx([0.02, 1.0, 1.0, 0.02])
    assert TrapezoidSchedule(10, warmup_steps=10, cooldown_fraction=0.0)(9) == 1.0  # all warmup
    assert TrapezoidSchedule(10, warmup_steps=0, cooldown_fraction=1.0)(0) == 1.0  # all cooldown
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert get_trapezoid_schedule(opt, 4, warmup_steps=2, cooldown_fraction=0.5).get_last_lr() == [0.0]
    with pytest.raises(ValueError, match="exceed num_training_steps"):
        TrapezoidSchedule(100, warmup_steps=51, cooldown_fraction=0.5)


def _args(out, **kw):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-3, weight_decay=0.1, max_steps=2,
        use_cpu=True, report_to="none", save_strategy="steps", save_steps=2, logging_steps=1, warmup_steps=1, seed=0,
        data_seed=0, disable_tqdm=True,
    )  # fmt: skip
    base.update(kw)
    return WarmupFreeTrainingArguments(**base)


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "reduce_lr_on_plateau"])
def test_constant_schedules_record_no_step_count(name, tmp_path):
    extra = dict(eval_strategy="steps", eval_steps=1) if name == "reduce_lr_on_plateau" else {}
    args = _args(tmp_path, lr_scheduler_type=name, **extra)
    saved, now = schedule_record(args, 100), schedule_record(args, 200)
    assert saved["num_training_steps"] is None and saved == now
    run = {"normalized_optimizer": "lion_ar"}
    assert changed_resume_options(args, None, None, {**run, "schedule": saved}, {**run, "schedule": now}) == []


def test_linear_schedule_records_its_step_count(tmp_path):
    args = _args(tmp_path, lr_scheduler_type="linear")
    saved, now = schedule_record(args, 100), schedule_record(args, 200)
    assert saved["num_training_steps"] == 100
    run = {"normalized_optimizer": "lion_ar"}
    assert changed_resume_options(args, None, None, {**run, "schedule": saved}, {**run, "schedule": now}) == [
        "--max_steps/--num_train_epochs (training steps) 100 in the checkpoint, 200 now"
    ]


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def _data(n=16, t=8):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": (ids := torch.randint(0, 64, (t,), generator=g)), "labels": ids.clone()} for _ in range(n)]


def test_constant_with_warmup_resume_may_extend_max_steps(tmp_path):
    data = _data()
    WarmupFreeTrainer(model=_model(), args=_args(tmp_path / "a", lr_scheduler_type="constant_with_warmup"),
                      train_dataset=data).train()  # fmt: skip
    ckpt = str(tmp_path / "a" / "checkpoint-2")
    longer = _args(tmp_path / "a", lr_scheduler_type="constant_with_warmup", max_steps=4)
    check_checkpoint_options(ckpt, longer, 4)  # accepted
    resumed = WarmupFreeTrainer(model=_model(), args=longer, train_dataset=data)
    resumed.train(resume_from_checkpoint=ckpt)
    assert resumed.state.global_step == 4
    assert resumed.lr_scheduler.get_last_lr() == pytest.approx([1e-3, 1e-3])  # past the 1 warmup step: constant

    # a linear schedule's shape depends on the step count: the same extension is refused
    WarmupFreeTrainer(model=_model(), args=_args(tmp_path / "b", lr_scheduler_type="linear"),
                      train_dataset=data).train()  # fmt: skip
    with pytest.raises(ValueError, match=r"--max_steps/--num_train_epochs \(training steps\) 2 in the checkpoint, 4"):
        check_checkpoint_options(
            str(tmp_path / "b" / "checkpoint-2"), _args(tmp_path / "b", lr_scheduler_type="linear", max_steps=4), 4
        )
