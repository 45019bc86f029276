"""op30 audit fixes: rotational_sgdm with --sgd_momentum >= 1 and no --rotation_angle is refused when the arguments are
created (F1)."""

import pytest

from hf_ext.optim import WarmupFreeTrainingArguments


# ----------------------------------------------------------------------------------------------------------------------
# F1: the SGD-momentum equilibrium angle needs momentum < 1; --sgd_momentum 1.0 passed the arguments and the trainer's
# constructor and failed at the first optimizer step of train()
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [1.0, 1.5])
def test_rotational_sgdm_momentum_without_an_angle_is_refused_when_the_arguments_are_created(tmp_path, momentum):
    kw = dict(output_dir=str(tmp_path), use_cpu=True, normalized_optimizer="rotational_sgdm", sgd_momentum=momentum)
    with pytest.raises(ValueError, match=r"--sgd_momentum < 1 .*--rotation_angle"):
        WarmupFreeTrainingArguments(**kw)
    # an explicit angle needs no equilibrium angle; other optimizers do not read --sgd_momentum
    WarmupFreeTrainingArguments(**kw, rotation_angle=0.01)
    WarmupFreeTrainingArguments(**{**kw, "normalized_optimizer": "rotational_adamw"})
    WarmupFreeTrainingArguments(**{**kw, "sgd_momentum": 0.99})
