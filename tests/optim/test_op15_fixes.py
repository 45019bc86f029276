"""Fixes of audit op15 (hf_ext/optim normalized optimizers, WarmupFreeTrainer, warmup recipe).

1. A `WarmupFreeTrainer` (or warmup recipe) resume with other optimizer options (`--learning_rate`, betas, Nesterov,
   inverse bias correction, `--rotation_angle`, ...) used to go on with the checkpoint's (torch's `load_state_dict`
   restores the param groups and the scheduler's base_lrs), and one with another `--cooldown_fraction` changed the
   schedule mid-run: both are refused, naming each flag.
2. With `update_norm_decay > 0` a step at lr 0 (the first step of transformers' warmups) skipped the update-norm EMA
   but counted in its bias correction: the next rotations were 1.07-1.65x too large.
3. `rotational_param_groups(rotational_embeddings="false")` made the embeddings rotational, and a string
   `decay_parameter_names` was read per character (no tensor rotational).
4. Complex parameters were accepted and failed inside `step()` after other tensors had moved.
5. The warmup recipe refused `--weight_decay 0` for the lion_a arms (LionA does not rotate).
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
from torch import nn

from hf_ext.optim import Lion, LionA, LionAR, RotationalWrapper, WarmupFreeTrainer, rotational_param_groups

from .test_warmup_trainer import _args, _data, _model

# ----------------------------------------------------------------------------------------------------------------------
# 1. resume with other options
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A 4-step lion_ar run (warmup 2, trapezoid) with checkpoint-2."""
    out = tmp_path_factory.mktemp("op15_full")
    trainer = WarmupFreeTrainer(model=_model(), args=_args(out), train_dataset=_data())
    trainer.train()
    return trainer, out / "checkpoint-2"


@pytest.mark.parametrize(
    "changes, flags",
    [
        (
            dict(learning_rate=1e-2, lion_beta1=0.5, nesterov=False, inverse_bias_correction=False),
            [
                "--learning_rate 0.001 in the checkpoint, 0.01 now",
                "--lion_beta1 0.98 in the checkpoint, 0.5 now",
                "--nesterov True in the checkpoint, False now",
                "--inverse_bias_correction True in the checkpoint, False now",
            ],
        ),
        (dict(rotation_angle=0.3, update_norm_decay=0.9), ["--rotation_angle None", "--update_norm_decay 0.0"]),
        (
            dict(lion_beta2=0.5, weight_decay=0.5),
            ["--lion_beta2 0.98 in the checkpoint, 0.5 now", "--weight_decay 1.0"],
        ),
        (dict(cooldown_fraction=0.0), ["--cooldown_fraction (num_decay_steps) 2 in the checkpoint, 0 now"]),
        (dict(warmup_steps=0), ["--warmup_steps (warmup steps; below 1, a fraction of the training steps) 2 in the checkpoint, 0 now"]),
        (dict(normalized_optimizer="lion_a"), ["--normalized_optimizer 'lion_ar' in the checkpoint, 'lion_a' now"]),
    ],
    ids=["lr_betas_switches", "angle_ema", "beta2_wd", "cooldown", "warmup", "optimizer"],
)
def test_resume_with_other_options_is_refused_naming_each_flag(full_run, tmp_path, changes, flags):
    full, checkpoint = full_run
    resumed = WarmupFreeTrainer(model=_model(), args=_args(tmp_path, **changes), train_dataset=_data())
    with pytest.raises(ValueError, match="was trained with other optimizer or schedule options") as err:
        resumed.train(resume_from_checkpoint=str(checkpoint))
    for flag in flags:
        assert flag in str(err.value)
    assert not list(tmp_path.glob("checkpoint-*"))  # refused before any step


def test_resume_with_the_same_options_is_bit_identical_and_checkpoints_record_the_run(full_run, tmp_path):
    full, checkpoint = full_run
    record = json.loads((checkpoint / "warmup_free_run.json").read_text())
    assert record == {
        "normalized_optimizer": "lion_ar",
        "schedule": {
            "lr_scheduler_type": "warmup_stable_decay",
            "num_warmup_steps": 2,
            "num_training_steps": 4,
            "scheduler_kwargs": {"decay_type": "linear", "num_decay_steps": 2},
        },
    }
    for name in ("with_record", "without_record"):  # a checkpoint written before the record: groups still compared
        ckpt = tmp_path / name / "ckpt"
        shutil.copytree(checkpoint, ckpt)
        if name == "without_record":
            os.remove(ckpt / "warmup_free_run.json")
        resumed = WarmupFreeTrainer(model=_model(), args=_args(tmp_path / name / "out"), train_dataset=_data())
        resumed.train(resume_from_checkpoint=str(ckpt))
        for a, b in zip(full.model.parameters(), resumed.model.parameters()):
            assert torch.equal(a, b)
    ckpt = tmp_path / "without_record" / "ckpt"
    resumed = WarmupFreeTrainer(model=_model(), args=_args(tmp_path / "x", lion_beta1=0.5), train_dataset=_data())
    with pytest.raises(ValueError, match="--lion_beta1 0.98 in the checkpoint, 0.5 now"):
        resumed.train(resume_from_checkpoint=str(ckpt))


def test_warmup_recipe_refuses_a_resume_with_other_options_before_any_work(tmp_path):
    from hf_ext.recipes.warmup import main

    tiny = ["--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
            "--block_size", "16", "--per_device_train_batch_size", "2", "--max_eval_blocks", "2", "--metrics_every",
            "2", "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true", "--save_strategy", "steps",
            "--save_steps", "2", "--seed", "3", "--max_steps", "4", "--arms", "lion_ar_no_warmup",
            "--output_dir", str(tmp_path)]  # fmt: skip
    main(tiny)
    checkpoint = tmp_path / "lion_ar_no_warmup" / "checkpoint-2"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for extra, flag in (
        (["--lion_beta1", "0.5"], "--lion_beta1 0.98 in the checkpoint, 0.5 now"),
        (["--nesterov", "false"], "--nesterov True in the checkpoint, False now"),
        (["--cooldown_fraction", "0.25"], "--cooldown_fraction (num_decay_steps) 2 in the checkpoint, 1 now"),
    ):
        with pytest.raises(ValueError, match="arm lion_ar_no_warmup: .*other optimizer or schedule options") as err:
            main([*tiny, *extra, "--resume_from_checkpoint", str(checkpoint)])
        assert flag in str(err.value)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing removed or written


# ----------------------------------------------------------------------------------------------------------------------
# 2. update-norm EMA on a step at lr 0
# ----------------------------------------------------------------------------------------------------------------------


def _reference(kind: str, w0: torch.Tensor, grads: list, lrs: list, lr0: float, wd: float, decay: float) -> list:
    """Independent float64 computation of the rotational update with the update-norm EMA (REQ's rule: the EMA of
    ||u_perp||^2 is updated on every step, its bias correction is 1 - decay**t), exact per-neuron rotation by
    theta = angle_t * ||u_perp|| / sqrt(ema / (1 - decay**t)); weights after every step."""
    w = w0.clone().double()
    r = w.norm(dim=1, keepdim=True)
    w = w - w.mean(dim=1, keepdim=True)
    w = w * r / w.norm(dim=1, keepdim=True)
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    ema = torch.zeros_like(r)
    out = []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.double()
        if kind == "adamw":
            b1, b2, eps = 0.9, 0.999, 1e-8
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            u = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
            eta = math.sqrt(2 * lr0 * wd * (1 - b1) / (1 + b1))
        else:  # LionAR: Lion direction, Lion equilibrium angle
            b1, b2 = 0.9, 0.99
            u = torch.sign(b1 * m + (1 - b1) * g)
            m = b2 * m + (1 - b2) * g
            eta = (
                math.sqrt(math.pi / 2)
                * math.sqrt(2 * lr0 * wd)
                * math.sqrt((1 - b1) ** 2 + b1**2 * (1 - b2) / (1 + b2))
            )
        u = u - u.mean(dim=1, keepdim=True)
        u = u - w * (w * u).sum(dim=1, keepdim=True) / (w * w).sum(dim=1, keepdim=True)
        un = u.norm(dim=1, keepdim=True)
        ema = decay * ema + (1 - decay) * un**2
        theta = eta * (lr / lr0) * un / (ema / (1 - decay**t)).sqrt()
        w = torch.cos(theta) * r * w / w.norm(dim=1, keepdim=True) - torch.sin(theta) * r * u / un
        out.append(w.clone())
    return out


def _run(kind: str, w0: torch.Tensor, grads: list, lrs: list, lr0: float, wd: float) -> list:
    w = nn.Parameter(w0.clone())
    if kind == "adamw":
        opt = RotationalWrapper([w], inner="adamw", lr=lr0, weight_decay=wd)  # update_norm_decay 0.9 by default
    else:
        opt = LionAR([w], lr=lr0, weight_decay=wd, update_norm_decay=0.9)
    out = []
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = g.clone()
        opt.step()
        out.append(w.detach().clone())
    return out


@pytest.mark.parametrize("kind", ["adamw", "lion_ar"])
def test_a_first_step_at_lr_0_updates_the_update_norm_ema(kind):
    """A 5-step linear warmup (transformers': factor s/w, 0 at the first step) then constant, float64: the run
    equals an independent float64 computation that updates the EMA every step, and the run whose first step has
    lr 1e-12 (the limit lr -> 0). Before, the angles of steps 2-6 were 1.07-1.65x too large."""
    torch.manual_seed(0)
    lr0, wd = 1e-3, 0.1
    w0 = torch.randn(8, 32, dtype=torch.float64)
    grads = [torch.randn(8, 32, dtype=torch.float64) for _ in range(7)]
    lrs = [lr0 * min(t / 5, 1.0) for t in range(7)]
    got = _run(kind, w0, grads, lrs, lr0, wd)
    ref = _reference(kind, w0, grads, lrs, lr0, wd, 0.9)
    limit = _run(kind, w0, grads, [1e-12, *lrs[1:]], lr0, wd)
    centred = w0 - w0.mean(dim=1, keepdim=True)
    centred = centred * w0.norm(dim=1, keepdim=True) / centred.norm(dim=1, keepdim=True)
    torch.testing.assert_close(got[0], centred, rtol=0, atol=1e-15)  # lr 0: the weights did not rotate
    for step, (a, b, c) in enumerate(zip(got, ref, limit), start=1):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=f"step {step} vs the float64 reference")
        torch.testing.assert_close(a, c, rtol=1e-8, atol=1e-9, msg=f"step {step} vs the lr -> 0 limit")


# ----------------------------------------------------------------------------------------------------------------------
# 3. rotational_param_groups argument types
# ----------------------------------------------------------------------------------------------------------------------


class _EmbLin(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 4)


@pytest.mark.parametrize("value", ["false", "true", 1, 0, None])
def test_rotational_embeddings_must_be_a_bool(value):
    with pytest.raises(ValueError, match=r"`rotational_embeddings` must be True or False, got"):
        rotational_param_groups(_EmbLin(), 0.1, rotational_embeddings=value)


@pytest.mark.parametrize("value", ["lin.weight", b"lin.weight", 3, ["lin.weight", 3]])
def test_decay_parameter_names_must_be_an_iterable_of_names(value):
    with pytest.raises(ValueError, match=r"`decay_parameter_names` must"):
        rotational_param_groups(_EmbLin(), 0.1, decay_parameter_names=value)


def test_valid_decay_parameter_names_and_rotational_embeddings_still_work():
    model = _EmbLin()
    for names in (["lin.weight"], ("lin.weight",), {"lin.weight"}, (n for n in ["lin.weight"])):
        groups = rotational_param_groups(model, 0.1, decay_parameter_names=names)
        assert [p for g in groups if g["rotational"] for p in g["params"]] == [model.lin.weight]
    groups = rotational_param_groups(model, 0.1, rotational_embeddings=True)
    rot = [p for g in groups if g["rotational"] for p in g["params"]]
    assert any(p is model.emb.weight for p in rot) and any(p is model.lin.weight for p in rot)


# ----------------------------------------------------------------------------------------------------------------------
# 4. complex parameters
# ----------------------------------------------------------------------------------------------------------------------

_BUILDERS = {
    "lion": lambda ps, **kw: Lion(ps, lr=1e-2, **kw),
    "lion_a": lambda ps, **kw: LionA(ps, lr=1e-2, **kw),
    "lion_ar": lambda ps, **kw: LionAR(ps, lr=1e-2, weight_decay=0.1, **kw),
    "rw_adamw": lambda ps, **kw: RotationalWrapper(ps, inner="adamw", lr=1e-2, weight_decay=0.1, **kw),
    "rw_lion": lambda ps, **kw: RotationalWrapper(ps, inner="lion", lr=1e-2, weight_decay=0.1, **kw),
    "rw_sgdm": lambda ps, **kw: RotationalWrapper(ps, inner="sgdm", lr=1e-2, weight_decay=0.1, **kw),
}


@pytest.mark.parametrize("name", sorted(_BUILDERS))
def test_complex_parameters_are_refused_before_any_step(name):
    build = _BUILDERS[name]
    real = nn.Parameter(torch.randn(4, 5))
    cplx = nn.Parameter(torch.randn(4, 5, dtype=torch.complex64))
    with pytest.raises(
        ValueError, match=r"does not support complex parameters: tensor 1 of a param group .*complex64"
    ):
        build([real, cplx])
    model = nn.Linear(5, 4)
    model.phase = nn.Parameter(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"complex parameters: parameter 'phase' \(shape \(3,\)"):
        build(model)
    opt = build([real])
    groups = len(opt.param_groups)
    with pytest.raises(ValueError, match=r"does not support complex parameters: tensor 0 of a param group"):
        opt.add_param_group({"params": (p for p in [cplx]), "rotational": False})
    assert len(opt.param_groups) == groups
    other = nn.Parameter(torch.randn(3))
    opt.add_param_group({"params": (p for p in [other]), "rotational": False})  # a generator of real tensors: kept
    assert opt.param_groups[-1]["params"] == [other]
    real.grad, other.grad = torch.randn_like(real), torch.randn_like(other)
    opt.step()


# ----------------------------------------------------------------------------------------------------------------------
# 5. warmup recipe: lion_a arms with --weight_decay 0
# ----------------------------------------------------------------------------------------------------------------------


def _recipe_args(tmp_path, *extra):
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments

    return parse_recipe_args(
        (WarmupRecipeArguments, WarmupTrainingArguments),
        ["--output_dir", str(tmp_path), "--max_steps", "4", "--use_cpu", "true", *extra],
        resume="keep",
    )


def test_lion_a_arms_run_with_weight_decay_0_and_lion_ar_arms_are_named(tmp_path):
    from hf_ext.recipes.warmup import _check_arm_options

    arms = ["lion_a_warmup", "lion_a_no_warmup", "adamw_warmup"]
    recipe, args = _recipe_args(tmp_path, "--weight_decay", "0")
    _check_arm_options(arms, recipe, args)  # LionA does not rotate: no angle needed
    with pytest.raises(ValueError, match=r"^The lion_ar arms rotate .*needs --weight_decay > 0") as err:
        _check_arm_options(["lion_ar_warmup", "lion_a_warmup"], recipe, args)
    assert "lion_a arms" not in str(err.value) and "lion_ar/lion_a" not in str(err.value)
    recipe, args = _recipe_args(tmp_path, "--weight_decay", "0", "--rotation_angle", "0.01")
    _check_arm_options(["lion_ar_warmup", "lion_a_warmup"], recipe, args)
