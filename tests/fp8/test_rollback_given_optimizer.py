"""`train_with_rollback` with an optimizer (and scheduler) passed as objects, `optimizers=(opt, sched)`.

The rollback dropped them: the Trainer then built AdamW from `args` and failed to load the checkpoint's optimizer
state (or, with matching group sizes, silently continued with AdamW). A rollback resumes with the user's own objects,
their state loaded from the checkpoint, exactly as the factory form (`optimizer_cls_and_kwargs`) does; the learning
rate logged for the first resumed step is the scaled one the optimizer uses.
"""

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments

from hf_ext.fp8 import Fp8HealthCallback, Fp8Trainer, convert, train_with_rollback
from hf_ext.models.fog import FogConfig, FogForCausalLM
from hf_ext.optim import LionAR, get_trapezoid_schedule

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
LION_AR = {"lr": 1e-3, "weight_decay": 1.0, "betas": (0.98, 0.98), "nesterov": True}
SGD = {"lr": 1e-3, "momentum": 0.9}


def _data():
    ids = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _run(tmp_path, name, make_trainer_kwargs):
    """A 10-step FP8 run that diverges at step 6 (until rolled back to checkpoint-4, lr x 0.5)."""
    torch.manual_seed(0)
    model = convert(FogForCausalLM(FogConfig.fog(**TINY)), "emulated", amax_history_len=8)
    args = TrainingArguments(
        str(tmp_path / name), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-3, save_strategy="steps",
        save_steps=2, logging_steps=1, report_to="none", seed=0, use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    callback = Fp8HealthCallback(every_n_steps=1, baseline_steps=2, action="rollback")
    trainer = Fp8Trainer(model=model, args=args, train_dataset=_data(), callbacks=[callback],
                         **make_trainer_kwargs(model))  # fmt: skip
    trainer.callback_handler.callbacks.remove(callback)
    trainer.callback_handler.callbacks.insert(0, callback)

    def blowup(module, inputs, output):
        if trainer.state.global_step + 1 == 6 and not callback.rollbacks:
            output = output.clone()
            output[:, 0, 0] += 1e4
            return output

    model.model.layers[1].mlp.down_proj.register_forward_hook(blowup)
    used = {}

    class LrUsed(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            used[state.global_step + 1] = optimizer.param_groups[0]["lr"]

    trainer.add_callback(LrUsed())
    train_with_rollback(trainer, callback)
    assert callback.rollbacks == 1 and trainer.state.global_step == 10
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    return trainer, model, used, logged


def _inner(optimizer):
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


@pytest.mark.parametrize("cls, kwargs", [(LionAR, LION_AR), (torch.optim.SGD, SGD)], ids=["lion_ar", "sgd"])
def test_a_given_optimizer_is_kept_and_the_run_equals_the_factory_form(tmp_path, cls, kwargs):
    given = {}

    def instance(model):
        given["optimizer"] = cls(model if cls is LionAR else model.parameters(), **kwargs)
        return {"optimizers": (given["optimizer"], None)}

    def factory(model):
        return {"optimizer_cls_and_kwargs": (cls, {**kwargs, "model": model} if cls is LionAR else kwargs)}

    trainer, model, used, logged = _run(tmp_path, "instance", instance)
    assert _inner(trainer.optimizer) is given["optimizer"]
    _, reference, ref_used, _ = _run(tmp_path, "factory", factory)
    assert used == ref_used
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_given_scheduler_is_kept_and_the_logged_learning_rate_is_the_scaled_one(tmp_path):
    given = {}

    def instance(model):
        optimizer = LionAR(model, **LION_AR)
        given["scheduler"] = get_trapezoid_schedule(optimizer, num_training_steps=10, warmup_steps=2)
        return {"optimizers": (optimizer, given["scheduler"])}

    trainer, _, used, logged = _run(tmp_path, "scheduled", instance)
    assert trainer.lr_scheduler is given["scheduler"]
    unscaled = get_trapezoid_schedule(torch.optim.SGD([torch.zeros(1)], lr=1e-3), num_training_steps=10,
                                      warmup_steps=2).lr_lambdas[0]  # fmt: skip
    for step in range(5, 11):  # the resumed steps run at half the schedule, and are logged so
        assert used[step] == pytest.approx(0.5 * 1e-3 * unscaled(step - 1), rel=1e-12), step
        assert logged[step] == pytest.approx(used[step], rel=1e-12), step


def test_the_documented_lion_ar_kwargs_form_builds_the_same_optimizer_again_at_the_rollback(tmp_path):
    """Trainer pops `model` from the kwargs of `optimizer_cls_and_kwargs`; the rollback then built LionAR without it."""
    given = {}

    def documented(model):
        given["kwargs"] = {**LION_AR, "model": model}
        return {"optimizer_cls_and_kwargs": (LionAR, given["kwargs"])}

    trainer, _, used, _ = _run(tmp_path, "documented", documented)
    assert isinstance(_inner(trainer.optimizer), LionAR)
    assert "model" in given["kwargs"] and trainer.optimizer_cls_and_kwargs[1] is given["kwargs"]
    assert sorted(used) == list(range(1, 11)) and used[5] == pytest.approx(0.5 * used[4] * 6 / 7, rel=1e-12)
