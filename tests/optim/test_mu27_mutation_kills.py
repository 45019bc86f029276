"""Mutation kills of audit pass mu27 (warmup recipe's unread-flag check after op27 F2)."""

import pytest


def test_warmup_recipe_refuses_adam_beta1_when_lion_ar_arms_are_given_a_rotation_angle(tmp_path):
    """--adam_beta1 sets the LionAR arms' rotation angle only when --rotation_angle is not given: with an explicit
    angle and no adamw arm, nothing reads it, and the recipe refuses it by name instead of ignoring it."""
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments, validate

    recipe = WarmupRecipeArguments(arms="lion_ar_warmup,lion_ar_no_warmup")
    args = WarmupTrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, adam_beta1=0.8, rotation_angle=0.01, max_steps=20
    )
    with pytest.raises(ValueError, match=r"would ignore --adam_beta1 \(read by the adamw arms, and by the lion_ar"):
        validate(recipe, args)
