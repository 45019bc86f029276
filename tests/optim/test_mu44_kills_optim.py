"""Mutation pass mu44: tests that kill surviving mutants of the transposed-convolution support (audit pass 37)."""

import warnings

import pytest
import torch
from torch import nn

from hf_ext.optim import LionAR, RotationalWrapper


def _make(cls, params, **kw):
    options = dict(lr=1e-2, weight_decay=0.1, **kw)
    return cls(params, **options) if cls is LionAR else cls(params, inner="adamw", **options)


@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
def test_a_conv_transpose_with_one_input_channel_is_not_called_immobile(cls):
    """ConvTranspose1d(1, 4, 3): weight (1, 4, 3), each output channel has 1 * 3 entries, so it rotates. Counting a
    neuron's entries as `shape[0]` (a 2D Conv1D's rule) called it immobile ("will never change")."""
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(1, 4, 3))
    opt = _make(cls, [{"params": [weight], "neuron_dim": 1}])
    weight.grad = torch.randn(1, 4, 3)
    before = weight.detach().clone()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*never change")
        opt.step()
    assert not torch.equal(weight.detach(), before)
    # a real one-entry neuron (ConvTranspose1d(1, 4, 1): weight (1, 4, 1)) is still warned about
    one = nn.Parameter(torch.randn(1, 4, 1))
    opt = _make(cls, [{"params": [one], "neuron_dim": 1}])
    one.grad = torch.randn(1, 4, 1)
    with pytest.warns(UserWarning, match="never change"):
        opt.step()
