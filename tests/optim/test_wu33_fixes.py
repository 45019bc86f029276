"""Audit wu33 fixes.

F1: `normalized_optimizer(name, args)` checks its values when called. `lion_ar` / `rotational_*` with plain
`TrainingArguments` (weight decay 0 by default) and no angle used to be accepted and to fail only inside
`Trainer.train()`, with a message naming neither `--weight_decay` nor the factory's `weight_decay=` override.
"""

import pytest
import torch
from transformers import TrainingArguments

from hf_ext.optim import LionAR, normalized_optimizer


def _plain_args(tmp_path, **kw):
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3, **kw)


@pytest.mark.parametrize("name", ["lion_ar", "rotational_adamw", "rotational_lion", "rotational_sgdm"])
def test_factory_refuses_a_rotation_without_weight_decay_when_called(tmp_path, name):
    with pytest.raises(ValueError, match=r"--weight_decay.*weight_decay=.*angle="):
        normalized_optimizer(name, _plain_args(tmp_path))


def test_factory_accepts_weight_decay_or_an_angle_and_builds_the_optimizer(tmp_path):
    factory, kwargs = normalized_optimizer("lion_ar", _plain_args(tmp_path), weight_decay=1.0)
    assert isinstance(factory()(torch.nn.Linear(3, 2), **kwargs), LionAR)
    normalized_optimizer("lion_ar", _plain_args(tmp_path), angle=0.01)
    normalized_optimizer("lion_ar", _plain_args(tmp_path, weight_decay=0.5))
    normalized_optimizer("lion_a", _plain_args(tmp_path))  # LionA does not rotate: weight decay 0 is fine


def test_factory_refuses_other_bad_values_by_name_when_called(tmp_path):
    with pytest.raises(ValueError, match="betas"):
        normalized_optimizer("lion_ar", _plain_args(tmp_path), weight_decay=1.0, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="angle"):
        normalized_optimizer("lion_ar", lr=1e-3, angle=3.0)
