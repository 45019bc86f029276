"""Mutation pass mu49: tests that kill surviving mutants of hf_ext.optim (normalized.py)."""

import math

import torch
from torch import nn

from hf_ext.optim import Lion, RotationalWrapper


def test_rotational_lion_without_nesterov_rotates_along_the_lion_direction():
    """Plain (non-Nesterov) Lion: the direction is `sign(b1 m + (1 - b1) g)` with the momentum *before* its update
    `m <- b2 m + (1 - b2) g`. The wrapper's rotation must follow that direction (the reference is torch-free: our
    `Lion` on a zero tensor), and its momentum must equal Lion's."""
    torch.manual_seed(0)
    betas = (0.9, 0.99)
    w = nn.Parameter(torch.randn(6, 10))
    opt = RotationalWrapper([w], inner="lion", lr=1e-3, weight_decay=0.1, update_norm_decay=0.0, betas=betas)
    z = nn.Parameter(torch.zeros(6, 10))
    lion = Lion([z], lr=1.0, betas=betas, weight_decay=0.0)
    theta = opt.group_angle(opt.param_groups[0])
    for step in range(4):
        g = torch.randn(6, 10, generator=torch.Generator().manual_seed(100 + step))
        before = w.detach().clone().double()
        w.grad = g.clone()
        opt.step()
        with torch.no_grad():
            z.zero_()
        z.grad = g.clone()
        lion.step()
        torch.testing.assert_close(opt.momentum_buffer(w), lion.state[z]["exp_avg"])
        if step == 0:
            continue  # the first step also centres the neurons
        u = -z.detach().double()
        u = u - u.mean(1, keepdim=True)
        u = u - before * ((u * before).sum(1, keepdim=True) / (before * before).sum(1, keepdim=True))
        r = before.norm(dim=1, keepdim=True)
        un = u.norm(dim=1, keepdim=True)
        expected = torch.where(
            un > 1e-9, math.cos(theta) * before - math.sin(theta) * r * u / un.clamp_min(1e-300), before
        )
        torch.testing.assert_close(w.detach().double(), expected, atol=2e-6, rtol=1e-5)
