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


def test_snr_statistics_of_float64_parameters_are_float64():
    # the gradient / momentum squared norms of the SNR correction were summed in float32 also for float64 tensors:
    # against a float64 reference the SNR differed by ~1e-7 relative and 60 LionA / LionAR steps by up to 2.6e-9
    from hf_ext.optim import LionA

    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(7, 9, dtype=torch.float64))
    opt = LionA([w], lr=1e-3, betas=(0.98, 0.98), snr_correction=True)
    b, sb = 0.98, 0.9
    m = torch.zeros_like(w)
    stats = [0.0, 0.0, 0.0]
    mu = torch.randn(7, 9, dtype=torch.float64)
    for t in range(1, 8):
        g = mu + 0.5 * torch.randn(7, 9, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        m = b * m + (1 - b) * g
        bc = 1 - b**t
        now = [float((g * g).sum()), float((m * m).sum()) / bc**2, (1 - b) / (1 + b) * (1 - b ** (2 * t)) / bc**2]
        stats = [sb * s + (1 - sb) * x for s, x in zip(stats, now)]
        if t > 1:
            eg2, em2, ec = (s / (1 - sb**t) for s in stats)
            snr = (max(em2 - ec * eg2, 0.0) / (1 - ec)) / (max(eg2 - em2, 0.0) / (1 - ec))
            assert snr > 1.0
            assert opt.state[w]["snr"] == pytest.approx(snr, rel=1e-12, abs=0), t
