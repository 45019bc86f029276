"""op27 audit fixes: --gradient_checkpointing refused by CubicNewtonTrainingArguments (F1); the warmup recipe refuses
--adam_beta2 without an adamw arm (F2); CubicNewtonTrainingArguments refuse the Adam flags CubicNewton ignores (F3);
a neuron whose update is parallel to it keeps its norm in float32 / bfloat16 rotations (F4)."""

import pytest
import torch
from torch import nn

from hf_ext.optim import CubicNewtonTrainingArguments, LionAR, RotationalWrapper


# ----------------------------------------------------------------------------------------------------------------------
# F1: --gradient_checkpointing passed the arguments and the trainer's constructor; train() then enabled it in the model
# and the first step refused it
# ----------------------------------------------------------------------------------------------------------------------
def test_gradient_checkpointing_is_refused_when_the_cubic_arguments_are_created(tmp_path):
    with pytest.raises(ValueError, match="--gradient_checkpointing"):
        CubicNewtonTrainingArguments(output_dir=str(tmp_path), use_cpu=True, gradient_checkpointing=True)
    CubicNewtonTrainingArguments(output_dir=str(tmp_path), use_cpu=True, gradient_checkpointing=False)


# ----------------------------------------------------------------------------------------------------------------------
# F2: the warmup recipe let --adam_beta2 through with only lion_ar arms, "read by the lion_ar arms' rotation angle";
# that angle (AdamW's equilibrium angle) reads --adam_beta1 only, and the arms reset --adam_beta2, so it was ignored
# ----------------------------------------------------------------------------------------------------------------------
def test_warmup_recipe_refuses_adam_beta2_that_only_lion_ar_arms_would_ignore(tmp_path):
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments, arm_arguments, validate

    recipe = WarmupRecipeArguments(arms="lion_ar_warmup,lion_ar_no_warmup")
    args = WarmupTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, adam_beta2=0.5, max_steps=20)
    assert arm_arguments("lion_ar_no_warmup", recipe, args).adam_beta2 == 0.999  # what the arm would have used
    with pytest.raises(ValueError, match=r"would ignore --adam_beta2 \(read by the adamw arms only\)"):
        validate(recipe, args)
    # --adam_beta1 sets their rotation angle: accepted
    args = WarmupTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, adam_beta1=0.8, max_steps=20)
    assert validate(recipe, args) == ["lion_ar_warmup", "lion_ar_no_warmup"]


# ----------------------------------------------------------------------------------------------------------------------
# F3: --adam_beta1/--adam_beta2/--adam_epsilon were accepted by CubicNewtonTrainingArguments and read by nothing
# (CubicNewton has no Adam moments), unlike --weight_decay, which is refused as ignored
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, value", [("adam_beta1", 0.5), ("adam_beta2", 0.9), ("adam_epsilon", 1e-6)])
def test_cubic_arguments_refuse_the_adam_flags_they_would_ignore(tmp_path, name, value):
    with pytest.raises(ValueError, match=f"--{name} {value} would be ignored"):
        CubicNewtonTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **{name: value})


# ----------------------------------------------------------------------------------------------------------------------
# F4: a neuron whose update is parallel to it (fan-in 1; fan-in 2 with zero_mean) has a tangential part of pure rounding
# noise, which passed the `moving` test: float32 norms came out scaled by ~cos(theta) (1.2e-4 off), bfloat16 up to 20%
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("fan_in", [1, 2])
@pytest.mark.parametrize(
    "make",
    [
        lambda w: LionAR([w], lr=1e-2, weight_decay=0.5),
        lambda w: RotationalWrapper([w], lr=1e-2, weight_decay=0.5, update_norm_decay=0.0),
    ],
)
def test_a_neuron_whose_update_is_radial_keeps_its_norm(dtype, tol, fan_in, make):
    gen = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(64, fan_in, generator=gen).to(dtype))
    opt = make(w)
    w.grad = torch.randn(64, fan_in, generator=gen).to(dtype)
    opt.step()  # records the (centred) norms
    recorded = opt.state[w]["norm"].double().view(-1)
    for _ in range(10):
        w.grad = torch.randn(64, fan_in, generator=gen).to(dtype)
        opt.step()
        error = ((w.detach().double().norm(dim=1) - recorded).abs() / recorded).max().item()
        assert error <= tol
