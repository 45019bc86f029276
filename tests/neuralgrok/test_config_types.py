"""NeuralGrokConfig and GradFilterOptimizer check the types of their numbers and switches at construction: a bool
passed `0 < True < inf` (meta_learning_rate=True built the meta-Adam with lr 1.0; virtual_lr=True was refused only at
the first outer step, after two optimizer steps had changed the model), and the string "false" is truthy
(coupled_weight_decay="false" built the coupled Adam, grokfast_warmup="false" kept the MA filter off)."""

import math
import re

import pytest
import torch

from hf_ext.neuralgrok import NeuralGrokConfig
from hf_ext.neuralgrok.optim import GradFilterOptimizer, GradientTransformOptimizer


def _config(tmp_path, **kw):
    return NeuralGrokConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)


@pytest.mark.parametrize(
    "name, value",
    [
        ("meta_learning_rate", True),
        ("meta_learning_rate", "1e-4"),
        ("meta_weight_decay", False),
        ("virtual_lr", True),
        ("virtual_lr", "0.1"),
        ("amplifier_c", True),
        ("amplifier_clip_norm", True),
        ("amplifier_clip_norm", "1.0"),
        ("grokfast_lamb", True),
        ("grokfast_lamb", "2.0"),
        ("grokfast_alpha", False),
    ],
)
def test_numbers_refuse_bools_and_strings(tmp_path, name, value):
    with pytest.raises(ValueError, match=rf"^{name}={re.escape(repr(value))}.* must be a"):
        _config(tmp_path, **{name: value})


@pytest.mark.parametrize("name", ["coupled_weight_decay", "grokfast_warmup", "track_entropy", "track_train_accuracy"])
@pytest.mark.parametrize("value", ["false", "False", 0, 1, None])
def test_switches_must_be_bools(tmp_path, name, value):
    with pytest.raises(ValueError, match=rf"^{name}={re.escape(repr(value))} must be a bool"):
        _config(tmp_path, **{name: value})


def test_good_values_pass(tmp_path):
    args = _config(
        tmp_path,
        meta_learning_rate=1e-3,
        meta_weight_decay=0,
        virtual_lr=1,
        amplifier_c=2,
        amplifier_clip_norm=math.inf,
        grokfast_lamb=-1.0,
        grokfast_alpha=0.0,
        coupled_weight_decay=False,
        grokfast_warmup=False,
        track_entropy=False,
        track_train_accuracy=False,
    )
    assert args.coupled_weight_decay is False and args.virtual_lr == 1


def _inner():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)


@pytest.mark.parametrize("warmup", ["false", 0, None])
def test_grad_filter_warmup_must_be_a_bool(warmup):
    with pytest.raises(ValueError, match=rf"^warmup={warmup!r} must be a bool"):
        GradFilterOptimizer(_inner(), mode="ma", warmup=warmup)


def test_grad_filter_alpha_and_track_entropy_types():
    with pytest.raises(ValueError, match="alpha=False must be a number"):
        GradFilterOptimizer(_inner(), alpha=False)
    with pytest.raises(ValueError, match="track_entropy='no' must be a bool"):
        GradientTransformOptimizer(_inner(), track_entropy="no")
    assert GradFilterOptimizer(_inner(), mode="ma", warmup=False).warmup is False
