"""`hf_ext.utils.resume`: the dashed `--resume-from-checkpoint` spelling, and the checks every checkpointing recipe
runs before any work (leftover checkpoints of an earlier run, a checkpoint beyond --max_steps)."""

import json

import pytest


def _tiny():
    """A one-parameter-vector regression model for transformers' Trainer."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x, labels=None):
            return {"loss": ((x * self.w).sum(-1) - labels).pow(2).mean()}

    return Tiny()


def _checkpoint(folder, step):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--resume-from-checkpoint"], ["--resume_from_checkpoint=last"]),
        (["--resume-from-checkpoint", "--output_dir", "o"], ["--resume_from_checkpoint=last", "--output_dir", "o"]),
        (["--resume-from-checkpoint", "a/checkpoint-2"], ["--resume_from_checkpoint", "a/checkpoint-2"]),
        (["--resume-from-checkpoint=a/checkpoint-2"], ["--resume_from_checkpoint=a/checkpoint-2"]),
        (["--resume_from_checkpoint"], ["--resume_from_checkpoint=last"]),
    ],
)
def test_normalize_resume_argv_handles_the_dashed_spelling(argv, expected):
    """The bare dashed alias (shown in --help) used to be an argparse error; now every spelling becomes the
    underscore one."""
    from hf_ext.utils.resume import normalize_resume_argv

    assert normalize_resume_argv(argv) == expected


def test_bare_dashed_flag_parses_to_the_last_checkpoint(tmp_path):
    """Through the recipes' parser: a bare `--resume-from-checkpoint` resumes the newest checkpoint."""
    from transformers import TrainingArguments

    from hf_ext.recipes._common import parse_recipe_args

    ckpt = _checkpoint(tmp_path / "checkpoint-3", 3)
    (args,) = parse_recipe_args((TrainingArguments,), ["--output_dir", str(tmp_path), "--resume-from-checkpoint"])
    assert args.resume_from_checkpoint == str(ckpt)


def test_fresh_run_refuses_leftover_checkpoints(tmp_path):
    from hf_ext.utils.resume import check_checkpoint_folders

    check_checkpoint_folders(None, [tmp_path / "nothing-here"])
    _checkpoint(tmp_path / "run" / "checkpoint-4", 4)
    for value in (None, False, "false", ""):
        with pytest.raises(ValueError, match="checkpoints of an earlier run.*--resume_from_checkpoint.*--output_dir"):
            check_checkpoint_folders(value, [str(tmp_path / "run")])
    check_checkpoint_folders("last", [str(tmp_path / "run")], max_steps=4)  # a resume is fine


def test_resume_refuses_a_checkpoint_beyond_max_steps(tmp_path):
    from hf_ext.utils.resume import check_checkpoint_folders

    ckpt = _checkpoint(tmp_path / "checkpoint-9", 9)
    with pytest.raises(ValueError, match="global_step 9.*--max_steps 6"):
        check_checkpoint_folders(str(ckpt), [str(tmp_path)], max_steps=6)
    with pytest.raises(ValueError, match="global_step 9.*--max_steps 6"):
        check_checkpoint_folders("last", [str(tmp_path)], max_steps=6)
    # a finished run of the same length: resuming would train a step past --max_steps (see the test below)
    with pytest.raises(ValueError, match="global_step 9 = --max_steps.*one step more"):
        check_checkpoint_folders(str(ckpt), [str(tmp_path)], max_steps=9, finished=True)
    check_checkpoint_folders(str(ckpt), [str(tmp_path)], max_steps=9)  # one run of several (see docs)
    check_checkpoint_folders(str(ckpt), [str(tmp_path)], max_steps=10)
    check_checkpoint_folders(str(ckpt), [str(tmp_path)], max_steps=-1)  # epoch-based: not compared


def test_transformers_trains_a_step_past_max_steps_when_resumed_from_the_last_checkpoint(tmp_path):
    """Why a checkpoint at --max_steps is refused: transformers' Trainer resumed from it runs one more optimizer step
    (global_step max_steps + 1) before it checks max_steps. If this test fails, transformers stopped doing so and the
    refusal can be relaxed to checkpoints beyond --max_steps."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    data = Dataset.from_dict({"x": [[1.0, 2.0, 3.0]] * 32, "labels": [1.0] * 32})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, save_steps=4,
                             save_strategy="steps", report_to="none", use_cpu=True, learning_rate=1e-3,
                             lr_scheduler_type="constant", logging_steps=1, disable_tqdm=True)  # fmt: skip
    Trainer(model=_tiny(), args=args, train_dataset=data).train()
    resumed = Trainer(model=_tiny(), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert resumed.state.global_step == 5


def test_pretrain_refuses_leftover_checkpoints_and_a_checkpoint_past_max_steps_before_any_work(tmp_path, monkeypatch):
    """pretrain skipped the checkpoint-folder checks the other recipes run: a fresh run mixed its checkpoints with an
    earlier run's, and a resume from checkpoint-4 with --max_steps 2 trained to step 5. (A checkpoint at --max_steps
    is restored: tests/test_recipes_resume.py.)"""
    from hf_ext.recipes import pretrain

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(pretrain, "build_tokenizer", no_work, raising=False)
    monkeypatch.setattr("hf_ext.data.build_tokenizer", no_work)
    monkeypatch.setattr("hf_ext.data.load_text_datasets", no_work)
    out = tmp_path / "run"
    ckpt = _checkpoint(out / "checkpoint-4", 4)
    base = ["--output_dir", str(out), "--model_type", "llama", "--fp8_backend", "none"]
    with pytest.raises(ValueError, match="checkpoints of an earlier run"):
        pretrain.main([*base, "--max_steps", "8"])
    with pytest.raises(ValueError, match="beyond this run's --max_steps 2"):
        pretrain.main([*base, "--max_steps", "2", "--resume_from_checkpoint", str(ckpt)])


def test_layer_parallel_finetune_refuses_a_checkpoint_past_max_steps(tmp_path):
    from hf_ext.recipes import layer_parallel

    out = tmp_path / "run"
    ckpt = _checkpoint(out / "checkpoint-4", 4)
    base = ["--output_dir", str(out), "--finetune", "true", "--resume_from_checkpoint", str(ckpt)]
    with pytest.raises(ValueError, match="beyond this run's --max_steps 2"):
        layer_parallel.main([*base, "--max_steps", "2"])


def test_a_finished_run_is_restored_without_a_step_past_max_steps(tmp_path):
    """`train_or_restore_finished` (recipes that resume several runs, some finished): from a checkpoint at max_steps
    the run is restored as a resume restores it and left before the step transformers would train past max_steps;
    from an earlier checkpoint it trains as `train()` does."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hf_ext.utils.resume import train_or_restore_finished

    class Ends(TrainerCallback):
        ended = 0

        def on_train_end(self, args, state, control, **kwargs):
            Ends.ended += 1

    data = Dataset.from_dict({"x": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]] * 16, "labels": [1.0, 0.0] * 16})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, save_steps=2,
                             save_strategy="steps", report_to="none", use_cpu=True, learning_rate=1e-2,
                             lr_scheduler_type="constant", logging_steps=1, disable_tqdm=True, seed=0)  # fmt: skip
    full = Trainer(model=_tiny(), args=args, train_dataset=data)
    full.train()
    logged = [h for h in full.state.log_history if "loss" in h]
    for checkpoint in ("checkpoint-4", "checkpoint-2"):
        trainer = Trainer(model=_tiny(), args=args, train_dataset=data, callbacks=[Ends()])
        before = Ends.ended
        train_or_restore_finished(trainer, str(tmp_path / checkpoint))
        assert trainer.state.global_step == 4 and Ends.ended == before + 1
        assert torch.equal(trainer.model.w, full.model.w)
        assert [h for h in trainer.state.log_history if "loss" in h] == logged
        state, ref = trainer.optimizer.state_dict()["state"], full.optimizer.state_dict()["state"]
        assert all(torch.equal(state[0][k], ref[0][k]) for k in ("exp_avg", "exp_avg_sq"))
        assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # `True`, as `train()` takes it: the last checkpoint in output_dir (checkpoint-4, finished: restored)
    trainer = Trainer(model=_tiny(), args=args, train_dataset=data)
    assert train_or_restore_finished(trainer, True) is None
    assert trainer.state.global_step == 4 and torch.equal(trainer.model.w, full.model.w)
    assert not (tmp_path / "checkpoint-5").exists()
    empty = TrainingArguments(**{**args.to_dict(), "output_dir": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match="No valid checkpoint found"):
        train_or_restore_finished(Trainer(model=_tiny(), args=empty, train_dataset=data), True)


def test_a_restored_finished_run_loads_its_best_checkpoint_as_the_uninterrupted_run_did(tmp_path):
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from hf_ext.utils.resume import train_or_restore_finished

    data = Dataset.from_dict({"x": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]] * 16, "labels": [1.0, 0.0] * 16})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, save_steps=1,
                             save_strategy="steps", eval_strategy="steps", eval_steps=1, load_best_model_at_end=True,
                             report_to="none", use_cpu=True, learning_rate=0.6, lr_scheduler_type="constant",
                             logging_steps=1, disable_tqdm=True, seed=0)  # fmt: skip
    full = Trainer(model=_tiny(), args=args, train_dataset=data, eval_dataset=data)
    full.train()
    assert full.state.best_model_checkpoint != str(tmp_path / "checkpoint-4")  # the best is not the last
    trainer = Trainer(model=_tiny(), args=args, train_dataset=data, eval_dataset=data)
    train_or_restore_finished(trainer, str(tmp_path / "checkpoint-4"))
    assert trainer.state.global_step == 4 and torch.equal(trainer.model.w, full.model.w)


def test_a_run_a_callback_stopped_is_restored_not_trained_on(tmp_path):
    """NeuralGrok's --stop_at_target: a run stopped at step 2 of 6 keeps checkpoint-2 with should_training_stop in
    its saved TrainerControl; a resume used to clear the stop (on_train_begin) and train on to step 6."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hf_ext.utils.resume import checkpoint_stopped, train_or_restore_finished

    class StopAt2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    data = Dataset.from_dict({"x": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]] * 16, "labels": [1.0, 0.0] * 16})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=2, save_steps=2,
                             save_strategy="steps", report_to="none", use_cpu=True, learning_rate=1e-2,
                             logging_steps=1, disable_tqdm=True, seed=0)  # fmt: skip
    full = Trainer(model=_tiny(), args=args, train_dataset=data, callbacks=[StopAt2()])
    full.train()
    assert full.state.global_step == 2 and checkpoint_stopped(str(tmp_path / "checkpoint-2"))
    trainer = Trainer(model=_tiny(), args=args, train_dataset=data, callbacks=[StopAt2()])
    train_or_restore_finished(trainer, str(tmp_path / "checkpoint-2"))
    assert trainer.state.global_step == 2 and torch.equal(trainer.model.w, full.model.w)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_checkpoint_saved_with_save_only_model_is_told_apart_and_refused_for_a_resume(tmp_path):
    """transformers' Trainer writes no optimizer, scheduler or RNG state under `save_only_model=True`, and resumed from
    such a checkpoint silently restarts the optimizer and the LR schedule: the recipes' checks refuse it (named or
    newest), and take a full checkpoint (or a fake one without weights, as in these tests) as before."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from hf_ext.utils.resume import check_checkpoint_folders, resolve_resume_checkpoint, saved_only_model

    data = Dataset.from_dict({"x": [[1.0, 2.0, 3.0]] * 8, "labels": [1.0] * 8})
    for only in (False, True):
        args = TrainingArguments(output_dir=str(tmp_path / str(only)), max_steps=2, per_device_train_batch_size=2,
                                 save_strategy="steps", save_steps=2, save_only_model=only, report_to="none",
                                 use_cpu=True, disable_tqdm=True)  # fmt: skip
        Trainer(model=_tiny(), args=args, train_dataset=data).train()
    full, weights_only = tmp_path / "False" / "checkpoint-2", tmp_path / "True" / "checkpoint-2"
    assert not saved_only_model(str(full)) and saved_only_model(str(weights_only))
    assert not saved_only_model(str(_checkpoint(tmp_path / "fake" / "checkpoint-2", 2)))
    assert resolve_resume_checkpoint("last", str(full.parent)) == str(full)
    check_checkpoint_folders(str(full), [str(full.parent)], max_steps=4)
    for value in ("last", str(weights_only)):
        with pytest.raises(ValueError, match="save_only_model=True: it holds only the model weights"):
            resolve_resume_checkpoint(value, str(weights_only.parent))
        with pytest.raises(ValueError, match="save_only_model=True"):
            check_checkpoint_folders(value, [str(weights_only.parent)], max_steps=4)


def _extension_args(folder, max_steps, **overrides):
    from transformers import TrainingArguments

    kwargs = dict(output_dir=str(folder), max_steps=max_steps, per_device_train_batch_size=2, save_steps=2,
                  save_strategy="steps", report_to="none", use_cpu=True, learning_rate=1e-2, logging_steps=1,
                  disable_tqdm=True, seed=0)  # fmt: skip
    return TrainingArguments(**{**kwargs, **overrides})


_EXTENSION_DATA = {"x": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]] * 16, "labels": [1.0, 0.0] * 16}


def _lrs(trainer, after=0):
    return {
        h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h and h["step"] > after
    }


@pytest.mark.parametrize(
    "schedule, checkpoint",
    [
        # the last checkpoint of a finished run: transformers sets should_training_stop at the last step, and it
        # counted as a stop by a callback, so the run was restored at step 4 and trained nothing
        ({"lr_scheduler_type": "constant"}, 4),
        # warmup_stable_decay with absolute warmup and decay steps, resumed before the decay started
        (
            {
                "lr_scheduler_type": "warmup_stable_decay",
                "warmup_steps": 1,
                "lr_scheduler_kwargs": {"num_decay_steps": 2, "decay_type": "linear"},
            },
            2,
        ),
    ],  # fmt: skip
)
def test_a_resume_with_a_larger_max_steps_trains_on_as_the_longer_run_would(tmp_path, schedule, checkpoint):
    """A schedule whose earlier steps do not depend on max_steps extends: the resume trains to the new max_steps, with
    the learning rates (and weights) of a run launched with the new max_steps from the start."""
    import torch
    from datasets import Dataset
    from transformers import Trainer

    from hf_ext.utils.resume import checkpoint_stopped, train_or_restore_finished

    data = Dataset.from_dict(_EXTENSION_DATA)
    short = tmp_path / "short"
    Trainer(model=_tiny(), args=_extension_args(short, 4, **schedule), train_dataset=data).train()
    assert not checkpoint_stopped(str(short / "checkpoint-4"))  # the flag transformers sets at max_steps
    longer = Trainer(model=_tiny(), args=_extension_args(tmp_path / "long", 8, **schedule), train_dataset=data)
    longer.train()
    resumed = Trainer(model=_tiny(), args=_extension_args(short, 8, **schedule), train_dataset=data)
    train_or_restore_finished(resumed, str(short / f"checkpoint-{checkpoint}"))
    assert resumed.state.global_step == 8 and (short / "checkpoint-8").is_dir()
    assert _lrs(resumed, checkpoint) == pytest.approx(_lrs(longer, checkpoint), rel=1e-12)
    assert len(_lrs(resumed, checkpoint)) == 8 - checkpoint
    torch.testing.assert_close(resumed.model.w, longer.model.w, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "schedule, checkpoint, first",
    [
        ({"lr_scheduler_type": "linear"}, 3, 2),  # the decay depends on max_steps from the first step on
        ({"lr_scheduler_type": "linear"}, 6, 2),  # the last checkpoint of the finished run
        # the rates agree up to the checkpoint's own step and differ at the rate of its next step (scheduler index
        # global_step, which the checkpoint's optimizer already holds): a comparison that stops a step short lets it
        # train step 4 with the old schedule's rate and step 5 on with the new one's
        ({"lr_scheduler_type": "linear", "warmup_steps": 2}, 3, 4),
        ({"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 0.5}, 4, 2),  # a warmup fraction moves
        # warmup_stable_decay resumed after its decay started
        ({"lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": {"num_decay_steps": 2}}, 6, 6),
    ],
)
def test_a_resume_that_would_mix_two_schedules_is_refused_before_any_step(tmp_path, schedule, checkpoint, first):
    """A resume with another max_steps used to go on silently with the old schedule up to the checkpoint and the new
    one after it (a linear decay's learning rate went up at the resume); now it is refused before any step, naming
    --max_steps, the first step whose rate differs, both rates and the fixes."""
    from datasets import Dataset
    from transformers import Trainer

    from hf_ext.utils.resume import train_or_restore_finished

    data = Dataset.from_dict(_EXTENSION_DATA)
    Trainer(model=_tiny(), args=_extension_args(tmp_path, 6, save_steps=1, **schedule), train_dataset=data).train()
    trainer = Trainer(model=_tiny(), args=_extension_args(tmp_path, 10, **schedule), train_dataset=data)
    before = dict(vars(trainer))
    pattern = (
        rf"--max_steps 10: .*checkpoint-{checkpoint} \(global_step {checkpoint}\) is of a run with max_steps 6.*"
        rf"learning rate of step {first} is .* in the checkpoint's run and .* with --max_steps 10.*"
        r"Resume with --max_steps 6.*warmup_stable_decay with an absolute num_decay_steps.*start a new run"
    )
    with pytest.raises(ValueError, match=pattern):
        train_or_restore_finished(trainer, str(tmp_path / f"checkpoint-{checkpoint}"))
    assert trainer.state.global_step == 0 and trainer.lr_scheduler is None and vars(trainer).keys() == before.keys()
    assert not any(int(p.name.split("-")[1]) > 6 for p in tmp_path.glob("checkpoint-*"))


def test_a_finished_run_is_not_restored_under_another_schedule(tmp_path):
    """checkpoint-4 of an 8-step linear run, resumed with --max_steps 4, was restored as a finished 4-step run although
    its steps followed the 8-step schedule; now refused. With the same schedule (constant) it is restored."""
    from datasets import Dataset
    from transformers import Trainer

    from hf_ext.utils.resume import train_or_restore_finished

    data = Dataset.from_dict(_EXTENSION_DATA)
    for name in ("linear", "constant"):
        folder = tmp_path / name
        args = _extension_args(folder, 8, lr_scheduler_type=name)
        Trainer(model=_tiny(), args=args, train_dataset=data).train()
        trainer = Trainer(model=_tiny(), args=_extension_args(folder, 4, lr_scheduler_type=name), train_dataset=data)
        if name == "linear":
            with pytest.raises(ValueError, match="--max_steps 4: .*max_steps 8.*learning rate of step 2"):
                train_or_restore_finished(trainer, str(folder / "checkpoint-4"))
            assert trainer.state.global_step == 0
        else:
            assert train_or_restore_finished(trainer, str(folder / "checkpoint-4")) is None
            assert trainer.state.global_step == 4


def test_an_epoch_based_finished_run_is_still_restored(tmp_path):
    """--max_steps -1 (hyperinf's default): the last checkpoint of a finished run records the flag transformers sets
    at the last step, which no longer counts as a stop by a callback; the run's end is the step count the checkpoint
    records, so it is restored as before, with no step past it (1.5 epochs of 4 steps end mid-epoch, at step 6,
    where transformers' Trainer resumed would train step 7)."""
    import torch
    from datasets import Dataset
    from transformers import Trainer

    from hf_ext.utils.resume import checkpoint_stopped, train_or_restore_finished

    data = Dataset.from_dict({"x": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]] * 4, "labels": [1.0, 0.0] * 4})
    args = _extension_args(tmp_path, -1, num_train_epochs=1.5, lr_scheduler_type="linear")
    full = Trainer(model=_tiny(), args=args, train_dataset=data)
    full.train()
    assert full.state.global_step == 6 and not checkpoint_stopped(str(tmp_path / "checkpoint-6"))
    trainer = Trainer(model=_tiny(), args=args, train_dataset=data)
    assert train_or_restore_finished(trainer, str(tmp_path / "checkpoint-6")) is None
    assert trainer.state.global_step == 6 and not (tmp_path / "checkpoint-7").exists()
    assert torch.equal(trainer.model.w, full.model.w)


def _recording_trainer():
    """transformers' Trainer with hf_ext's checkpoint additions (as every recipe's Trainer has them)."""
    from transformers import Trainer

    from hf_ext.utils.resume import with_loss_window

    return with_loss_window(Trainer)


@pytest.mark.parametrize(
    "old, new, checkpoint, first, lead, was",
    [
        # a warmup restarted mid-run (the checkpoint's run was at the full rate from step 3 on)
        (
            {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 2, "max_steps": 8},
            {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 8, "max_steps": 16},
            4,
            2,
            "--max_steps 16, --warmup_steps 8",
            "max_steps 8, warmup_steps 2",
        ),
        # a new --learning_rate: the restored scheduler's base_lrs win, the new rate was silently ignored
        (
            {"lr_scheduler_type": "constant", "max_steps": 8},
            {"lr_scheduler_type": "constant", "max_steps": 16, "learning_rate": 1e-3},
            4,
            1,
            "--max_steps 16, --learning_rate 0.001",
            "max_steps 8, learning_rate 0.01",
        ),
        # the same --max_steps: nothing was compared (constant up to step 5, then a linear decay's 0.00375)
        (
            {"lr_scheduler_type": "constant", "max_steps": 8},
            {"lr_scheduler_type": "linear", "max_steps": 8},
            4,
            2,
            "--lr_scheduler_type linear",
            "lr_scheduler_type constant",
        ),
        # the same --max_steps, a decay that now starts before the checkpoint
        (
            {
                "lr_scheduler_type": "warmup_stable_decay",
                "lr_scheduler_kwargs": {"num_decay_steps": 2},
                "max_steps": 8,
            },
            {
                "lr_scheduler_type": "warmup_stable_decay",
                "lr_scheduler_kwargs": {"num_decay_steps": 6},
                "max_steps": 8,
            },
            4,
            4,
            """--lr_scheduler_kwargs '{"num_decay_steps": 6}'""",
            """lr_scheduler_kwargs '{"num_decay_steps": 2}'""",
        ),
    ],  # fmt: skip
)
def test_a_resume_with_other_schedule_flags_is_refused_against_the_checkpoints_schedule(
    tmp_path, old, new, checkpoint, first, lead, was
):
    """The checkpoint's schedule used to be rebuilt from the NEW flags (at the old max_steps), and nothing was compared
    at the same max_steps: a resume that also changed --warmup_steps, --learning_rate, --lr_scheduler_type or
    --lr_scheduler_kwargs went on with two schedules mixed. Every checkpoint now records the flags its schedule was
    built from (lr_schedule.json), and the resume is refused before any step, naming the changed flags, the first
    step whose rate differs, both rates and the checkpoint's flags to resume with."""
    import re

    from datasets import Dataset

    from hf_ext.utils.resume import train_or_restore_finished

    trainer_cls = _recording_trainer()
    data = Dataset.from_dict(_EXTENSION_DATA)
    trainer_cls(model=_tiny(), args=_extension_args(tmp_path, **old), train_dataset=data).train()
    trainer = trainer_cls(model=_tiny(), args=_extension_args(tmp_path, **new), train_dataset=data)
    pattern = (
        rf"^{re.escape(lead)}: .*checkpoint-{checkpoint} \(global_step {checkpoint}\) is of a run with "
        rf"{re.escape(was)}, and the learning-rate schedule differs: the learning rate of step {first} is .* in the "
        rf"checkpoint's run and .* with {re.escape(lead)} \(.* relative apart\)\..*Resume with {re.escape('--' + was.replace(', ', ' --'))}"
        r".*start a new run"
    )
    with pytest.raises(ValueError, match=pattern) as err:
        train_or_restore_finished(trainer, str(tmp_path / f"checkpoint-{checkpoint}"))
    assert ("would be ignored" in str(err.value)) == ("learning_rate" in new)
    assert trainer.state.global_step == 0 and trainer.lr_scheduler is None
    assert trainer.args.learning_rate == new.get("learning_rate", 1e-2)  # the trainer's args are left as they were


def test_checkpoints_record_their_schedule_and_an_unchanged_schedule_prefix_still_resumes(tmp_path):
    """Each checkpoint of an hf_ext Trainer holds lr_schedule.json (the flags its schedule was built from); a resume
    whose schedule is the checkpoint's up to it still trains on: warmup_stable_decay with an absolute
    num_decay_steps changed from 2 to 4 and --max_steps from 8 to 16 before the decay started (the rates and weights
    of a run launched with the new flags)."""
    import torch
    from datasets import Dataset

    from hf_ext.utils.resume import SCHEDULE_RECORD_NAME, train_or_restore_finished

    trainer_cls = _recording_trainer()
    data = Dataset.from_dict(_EXTENSION_DATA)
    wsd = {"lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 1}
    old = _extension_args(tmp_path / "run", 8, lr_scheduler_kwargs={"num_decay_steps": 2}, **wsd)
    trainer_cls(model=_tiny(), args=old, train_dataset=data).train()
    record = json.loads((tmp_path / "run" / "checkpoint-4" / SCHEDULE_RECORD_NAME).read_text())
    assert record["args"] == {
        "learning_rate": 1e-2, "lr_scheduler_type": "warmup_stable_decay",
        "lr_scheduler_kwargs": {"num_decay_steps": 2}, "warmup_steps": 1, "max_steps": 8, "num_train_epochs": 3.0,
        "gradient_accumulation_steps": 1,
    }  # fmt: skip
    assert record["num_training_steps"] == 8
    new = {"lr_scheduler_kwargs": {"num_decay_steps": 4}, **wsd}
    longer = trainer_cls(model=_tiny(), args=_extension_args(tmp_path / "long", 16, **new), train_dataset=data)
    longer.train()
    resumed = trainer_cls(model=_tiny(), args=_extension_args(tmp_path / "run", 16, **new), train_dataset=data)
    train_or_restore_finished(resumed, str(tmp_path / "run" / "checkpoint-4"))
    assert resumed.state.global_step == 16
    assert _lrs(resumed, 4) == pytest.approx(_lrs(longer, 4), rel=1e-12) and len(_lrs(resumed, 4)) == 12
    torch.testing.assert_close(resumed.model.w, longer.model.w, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "run" / "checkpoint-16" / SCHEDULE_RECORD_NAME).read_text())["args"][
        "lr_scheduler_kwargs"
    ] == {"num_decay_steps": 4}


_EPOCH_DATA = {"x": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]] * 4, "labels": [1.0, 0.0] * 4}  # 4 steps an epoch


def test_an_epoch_based_finished_run_resumed_with_more_epochs_trains_on(tmp_path):
    """--max_steps -1 (hyperinf's default): the last checkpoint of a finished 1-epoch run, resumed with
    --num_train_epochs 3, used to be restored as finished (the checkpoint's own step count was taken as the run's
    end: nothing trained, rc 0). Its end is now the step count transformers derives from the epochs (12), and it trains
    on as a 3-epoch run launched at once (a constant schedule), as transformers' Trainer does."""
    import torch
    from datasets import Dataset
    from transformers import Trainer

    from hf_ext.utils.resume import run_max_steps, train_or_restore_finished

    data = Dataset.from_dict(_EPOCH_DATA)
    constant = {"lr_scheduler_type": "constant"}
    Trainer(model=_tiny(), args=_extension_args(tmp_path / "run", -1, num_train_epochs=1, **constant),
            train_dataset=data).train()  # fmt: skip
    longer = Trainer(model=_tiny(), args=_extension_args(tmp_path / "long", -1, num_train_epochs=3, **constant),
                     train_dataset=data)  # fmt: skip
    longer.train()
    resumed = Trainer(model=_tiny(), args=_extension_args(tmp_path / "run", -1, num_train_epochs=3, **constant),
                      train_dataset=data)  # fmt: skip
    assert run_max_steps(resumed) == 12
    assert train_or_restore_finished(resumed, str(tmp_path / "run" / "checkpoint-4")) is not None
    assert resumed.state.global_step == 12 and (tmp_path / "run" / "checkpoint-12").is_dir()
    assert _lrs(resumed, 4) == pytest.approx(_lrs(longer, 4), rel=1e-12) and len(_lrs(resumed, 4)) == 8
    torch.testing.assert_close(resumed.model.w, longer.model.w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("recording", [False, True])
@pytest.mark.parametrize("checkpoint", [4, 8])  # mid-run, and the last checkpoint of the finished run
def test_an_epoch_based_resume_with_more_epochs_that_would_mix_two_schedules_is_refused(
    tmp_path, recording, checkpoint
):
    """A 2-epoch (8-step) linear run resumed with --num_train_epochs 4 went on with the old schedule up to the
    checkpoint and the 16-step one after it (the rate went up at the resume: 0.005, then 0.00688), or, from its last
    checkpoint, was restored as finished; nothing was refused. Now refused before any step, naming
    --num_train_epochs and its step count, with or without the checkpoint's schedule record."""
    from datasets import Dataset
    from transformers import Trainer

    from hf_ext.utils.resume import train_or_restore_finished

    trainer_cls = _recording_trainer() if recording else Trainer
    data = Dataset.from_dict(_EPOCH_DATA)
    linear = {"lr_scheduler_type": "linear"}
    trainer_cls(model=_tiny(), args=_extension_args(tmp_path, -1, num_train_epochs=2, **linear),
                train_dataset=data).train()  # fmt: skip
    trainer = trainer_cls(model=_tiny(), args=_extension_args(tmp_path, -1, num_train_epochs=4, **linear),
                          train_dataset=data)  # fmt: skip
    back = "--num_train_epochs 2" if recording else "--max_steps 8"
    pattern = (
        rf"^--num_train_epochs 4 \(16 optimizer steps\): .*checkpoint-{checkpoint} \(global_step {checkpoint}\) is "
        rf"of a run with max_steps 8, .*learning rate of step 2 is 0.00875 in the checkpoint's run and 0.009375 .*"
        rf"Resume with {back}"
    )
    with pytest.raises(ValueError, match=pattern):
        train_or_restore_finished(trainer, str(tmp_path / f"checkpoint-{checkpoint}"))
    assert trainer.state.global_step == 0
    assert not (tmp_path / "checkpoint-10").exists()


# mu23 --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [{"per_device_train_batch_size": 1}, {"gradient_accumulation_steps": 2}])
def test_an_epoch_based_resume_with_another_batch_per_step_names_the_batch_not_the_epochs(tmp_path, change):
    """mu23 1: the same --num_train_epochs with another batch per optimizer step changes the step count, and the
    refusal told the user to "Resume with --num_train_epochs 2", the value they passed. It now names the batch per
    step (per-device batch size, the recorded accumulation, the number of processes)."""
    from datasets import Dataset

    from hf_ext.utils.resume import train_or_restore_finished

    trainer_cls = _recording_trainer()
    data = Dataset.from_dict(_EPOCH_DATA)
    linear = {"lr_scheduler_type": "linear"}
    trainer_cls(model=_tiny(), args=_extension_args(tmp_path, -1, num_train_epochs=2, **linear),
                train_dataset=data).train()  # fmt: skip
    trainer = trainer_cls(model=_tiny(), args=_extension_args(tmp_path, -1, num_train_epochs=2, **linear, **change),
                          train_dataset=data)  # fmt: skip
    with pytest.raises(ValueError) as err:
        train_or_restore_finished(trainer, str(tmp_path / "checkpoint-4"))
    message = str(err.value)
    assert "the same --num_train_epochs 2" in message and "in 8 optimizer steps" in message
    assert "Resume with the checkpoint's batch per optimizer step" in message
    assert "--gradient_accumulation_steps 1" in message and "Resume with --num_train_epochs" not in message
    assert trainer.state.global_step == 0


def test_a_refusal_prints_rates_that_differ_by_little_apart(tmp_path):
    """mu23 2: rates were printed to 6 digits, so a refusal could read "0.009999 ... and 0.009999"; now 10 digits
    and their relative gap."""
    from datasets import Dataset

    from hf_ext.utils.resume import train_or_restore_finished

    trainer_cls = _recording_trainer()
    data = Dataset.from_dict(_EXTENSION_DATA)
    linear = {"lr_scheduler_type": "linear"}
    # a 2-step run's checkpoint, recorded as of a 10000-step run (a 10000-step run is too long for a unit test)
    trainer_cls(model=_tiny(), args=_extension_args(tmp_path, 2, **linear), train_dataset=data).train()
    state_path = tmp_path / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["max_steps"] = 10000
    state_path.write_text(json.dumps(state))
    record_path = tmp_path / "checkpoint-2" / "lr_schedule.json"
    record = json.loads(record_path.read_text())
    record["args"]["max_steps"] = 10000
    record_path.write_text(json.dumps(record))
    trainer = trainer_cls(model=_tiny(), args=_extension_args(tmp_path, 10005, **linear), train_dataset=data)
    with pytest.raises(ValueError, match=r"learning rate of step 2 is 0\.009999 in .* and 0\.0099990005 with "
                                         r"--max_steps 10005 \(5e-08 relative apart\)"):  # fmt: skip
        train_or_restore_finished(trainer, str(tmp_path / "checkpoint-2"))


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "it cannot be read"),
        ("[]", "no 'args' object"),
        ('{"format": 1, "args": null}', "no 'args' object"),
    ],
)
def test_a_corrupt_schedule_record_is_refused_by_name(tmp_path, content, problem):
    """mu23 R12/R13: a corrupt lr_schedule.json is refused naming the file (not taken as missing, which would drop
    the check, nor a raw TypeError)."""
    from datasets import Dataset

    from hf_ext.utils.resume import train_or_restore_finished

    trainer_cls = _recording_trainer()
    data = Dataset.from_dict(_EXTENSION_DATA)
    trainer_cls(model=_tiny(), args=_extension_args(tmp_path, 4), train_dataset=data).train()
    (tmp_path / "checkpoint-2" / "lr_schedule.json").write_text(content)
    trainer = trainer_cls(model=_tiny(), args=_extension_args(tmp_path, 4), train_dataset=data)
    with pytest.raises(ValueError, match=rf"lr_schedule.json cannot be used: {problem}.*delete it"):
        train_or_restore_finished(trainer, str(tmp_path / "checkpoint-2"))
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("max_steps", [1, 4])
def test_a_finished_run_compares_the_rates_of_the_steps_it_trained(tmp_path, max_steps):
    """mu23 R09/R24: a finished run is compared on the rates of the steps it trained (1..max_steps): restored with its
    own flags (linear: the rate of the step after its last is another) it is not refused, and with another
    --learning_rate it is, also for a one-step run."""
    from datasets import Dataset

    from hf_ext.utils.resume import train_or_restore_finished

    trainer_cls = _recording_trainer()
    data = Dataset.from_dict(_EXTENSION_DATA)
    linear = {"lr_scheduler_type": "linear", "save_steps": 1}
    trainer_cls(model=_tiny(), args=_extension_args(tmp_path, max_steps, **linear), train_dataset=data).train()
    last = str(tmp_path / f"checkpoint-{max_steps}")
    again = trainer_cls(model=_tiny(), args=_extension_args(tmp_path, max_steps, **linear), train_dataset=data)
    assert train_or_restore_finished(again, last) is None and again.state.global_step == max_steps
    other = trainer_cls(model=_tiny(), args=_extension_args(tmp_path, max_steps, learning_rate=2e-2, **linear),
                        train_dataset=data)  # fmt: skip
    with pytest.raises(ValueError, match=r"^--learning_rate 0.02: .*learning rate of step 1 is 0.01 "):
        train_or_restore_finished(other, last)


def test_a_finished_run_is_not_compared_past_its_last_trained_step(tmp_path):
    """mu23 R09: checkpoint-4 of an 8-step warmup_stable_decay run (4 decay steps: steps 1-5 at the full rate)
    restored as a finished 4-step run with 1 decay step (steps 1-4 at the full rate too): every step it trained had the
    new schedule's rate, so it is restored; the rate of the step after its last (0.01 against 0) is not compared."""
    from datasets import Dataset

    from hf_ext.utils.resume import train_or_restore_finished

    trainer_cls = _recording_trainer()
    data = Dataset.from_dict(_EXTENSION_DATA)
    wsd = {"lr_scheduler_type": "warmup_stable_decay"}
    trainer_cls(model=_tiny(), args=_extension_args(tmp_path, 8, lr_scheduler_kwargs={"num_decay_steps": 4}, **wsd),
                train_dataset=data).train()  # fmt: skip
    shorter = trainer_cls(model=_tiny(), args=_extension_args(tmp_path, 4, lr_scheduler_kwargs={"num_decay_steps": 1},
                                                                **wsd), train_dataset=data)  # fmt: skip
    assert train_or_restore_finished(shorter, str(tmp_path / "checkpoint-4")) is None
    assert shorter.state.global_step == 4


def test_recorded_flags_the_resumed_arguments_lack_are_not_compared(tmp_path):
    """mu23 R15: a checkpoint of a Trainer whose arguments have more schedule fields (WarmupFree's cooldown_fraction)
    resumed with arguments without them: those are left out of the comparison (no raw KeyError), the rest compared."""
    from datasets import Dataset

    from hf_ext.utils.resume import train_or_restore_finished

    trainer_cls = _recording_trainer()
    data = Dataset.from_dict(_EXTENSION_DATA)
    constant = {"lr_scheduler_type": "constant"}
    trainer_cls(model=_tiny(), args=_extension_args(tmp_path, 4, **constant), train_dataset=data).train()
    path = tmp_path / "checkpoint-2" / "lr_schedule.json"
    record = json.loads(path.read_text())
    record["args"]["cooldown_fraction"] = 0.25
    path.write_text(json.dumps(record))
    resumed = trainer_cls(model=_tiny(), args=_extension_args(tmp_path, 4, **constant), train_dataset=data)
    assert train_or_restore_finished(resumed, str(tmp_path / "checkpoint-2")) is not None
    assert resumed.state.global_step == 4
    other = trainer_cls(model=_tiny(), args=_extension_args(tmp_path, 4, learning_rate=2e-2, **constant),
                        train_dataset=data)  # fmt: skip
    with pytest.raises(ValueError, match=r"^--learning_rate 0.02: "):
        train_or_restore_finished(other, str(tmp_path / "checkpoint-2"))
