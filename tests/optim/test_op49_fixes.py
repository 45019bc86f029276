"""Audit op49: silently wrong results of the warmup-free optimizers and their update metrics."""

import types
import warnings

import pytest
import torch
from torch import nn

from hf_ext.optim import LionAR
from hf_ext.optim.metrics import UpdateMetricsCallback, angular_update


def test_update_angle_measures_transposed_convolutions_per_output_channel():
    # LionAR rotates a ConvTranspose2d weight (in, out, kh, kw) per output channel `weight[:, j]` at exactly its angle;
    # the callback measured it per input channel (rows), reading 0.0062-0.0072 rad for an exact 0.00665
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 5, 3, bias=False))
    opt = LionAR(model, lr=1e-3, weight_decay=1.0)
    cb = UpdateMetricsCallback(plot_path=None)
    state = types.SimpleNamespace(global_step=0, log_history=[])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):  # the first step also centres the neurons: measure the later ones
            model.zero_grad()
            model(torch.randn(4, 3, 4, 4)).pow(2).sum().backward()
            old = model[0].weight.detach().clone()
            cb.on_pre_optimizer_step(None, state, None, model=model, optimizer=opt)
            opt.step()
            cb.on_optimizer_step(None, state, None, model=model)
            state.global_step += 1
    expected = opt.group_angle(opt.param_groups[0])
    assert angular_update(old, model[0].weight, 1) == pytest.approx(torch.full((5,), expected), rel=1e-5)
    assert cb.history[-1]["update/angle"] == pytest.approx(expected, rel=1e-5)

