"""Mutation pass mu52: tests that kill surviving mutants of hf_ext.neuralgrok (metrics.stability_after_target, GradNormOptimizer)."""

import torch

from hf_ext.neuralgrok import GradNormOptimizer, stability_after_target


def test_a_loss_exactly_at_the_spike_bound_is_not_a_spike():
    # a spike is a loss *above* max(spike_factor * running minimum, spike_floor): 10 * 0.125 = 1.25 exactly
    steps = [1, 2, 3]
    out = stability_after_target(
        steps, [1.0] * 3, steps, [0.125, 1.25, 0.125], target=1.0, spike_factor=10.0, spike_floor=0.05
    )
    assert out["loss_spikes"] == 0
    out = stability_after_target(steps, [1.0] * 3, steps, [0.05, 0.05, 0.05], target=1.0, spike_floor=0.05)
    assert out["loss_spikes"] == 0


def test_grad_norm_optimizer_rescales_every_tensor_to_norm_c():
    # GradNormOptimizer(c=...): g <- c g / ||g|| per tensor, then the base optimizer steps (no clipping here). With
    # SGD at lr 1 each parameter moves by c along -g / ||g|| (the norm is taken in float32, hence rtol 1e-6); c = 1
    # (the default) hid a c that was ignored
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    a0, b0 = a.detach().clone(), b.detach().clone()
    ga, gb = torch.randn(4, 3, dtype=torch.float64), 1e-3 * torch.randn(5, dtype=torch.float64)
    opt = GradNormOptimizer(torch.optim.SGD([a, b], lr=1.0), c=2.5, clip_norm=None, track_entropy=False)
    a.grad, b.grad = ga.clone(), gb.clone()
    opt.step()
    torch.testing.assert_close(a0 - a.detach(), 2.5 * ga / ga.norm(), rtol=1e-6, atol=0)
    torch.testing.assert_close(b0 - b.detach(), 2.5 * gb / gb.norm(), rtol=1e-6, atol=0)
