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
