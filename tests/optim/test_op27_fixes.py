"""op27 audit fixes: --gradient_checkpointing refused by CubicNewtonTrainingArguments (F1); the warmup recipe refuses
--adam_beta2 without an adamw arm (F2); CubicNewtonTrainingArguments refuse the Adam flags CubicNewton ignores (F3)."""

import pytest

from hf_ext.optim import CubicNewtonTrainingArguments


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
