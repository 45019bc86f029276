"""mu46 mutation kills: behaviours of the optimizers' load_state_dict shape check (`_refuse_mismatched_state`) and of
the core update math that a small mutation could change without any other test noticing."""

import math

import pytest
import torch
from torch import nn

from hf_ext.optim import LionAR


def test_lion_ar_per_tensor_state_loads_into_a_per_neuron_built_optimizer():
    # a state saved with per_neuron=False has one norm per tensor; torch's load_state_dict gives the loaded group the
    # saved per_neuron, so the check must count neurons in the *saved* layout (the current group's per_neuron=True
    # would expect 6 norms and refuse a valid state)
    torch.manual_seed(0)
    layer = nn.Linear(4, 6)
    opt = LionAR([{"params": [layer.weight], "per_neuron": False, "neuron_dim": 0}], lr=1e-2, weight_decay=0.1)
    layer.weight.grad = torch.randn_like(layer.weight)
    opt.step()
    state = opt.state_dict()
    assert state["state"][0]["norm"].numel() == 1
    other = nn.Linear(4, 6)
    other.weight.data.copy_(layer.weight.data)
    fresh = LionAR([{"params": [other.weight], "neuron_dim": 0}], lr=1e-2, weight_decay=0.1)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["per_neuron"] is False
    # and the resumed step rotates the whole tensor keeping its one recorded norm
    norm = float(other.weight.detach().norm())
    other.weight.grad = torch.randn_like(other.weight)
    fresh.step()
    assert abs(float(other.weight.detach().norm()) - norm) < 1e-5 * norm


def test_equilibrium_angles_equal_the_closed_forms():
    # Kosson et al. (2024): AdamW sqrt(2 eta lambda (1 - b1) / (1 + b1)), SGDM sqrt(2 eta lambda / (1 + alpha)),
    # Lion sqrt(pi / 2) sqrt(2 eta lambda) sqrt((1 - b1)^2 + b1^2 (1 - b2) / (1 + b2)); b1 = 0.9, b2 = 0.99 here, so
    # b1^2 = 0.81 (a b1 in its place gives 0.015104 rad, not 0.014867)
    from hf_ext.optim import equilibrium_angle

    lr, wd = 0.5, 0.01
    lion = math.sqrt(math.pi / 2) * math.sqrt(2 * lr * wd) * math.sqrt(0.1**2 + 0.81 * 0.01 / 1.99)
    assert abs(equilibrium_angle("lion", lr, wd, (0.9, 0.99)) - lion) < 1e-15
    assert abs(lion - 0.0148666) < 1e-6
    assert abs(equilibrium_angle("adamw", lr, wd, (0.9, 0.999)) - math.sqrt(0.01 * 0.1 / 1.9)) < 1e-15
    assert abs(equilibrium_angle("sgdm", lr, wd, momentum=0.9) - math.sqrt(0.01 / 1.9)) < 1e-15


def test_lion_ar_zero_mean_keeps_fan_in_2_neurons_centred():
    # with zero_mean, a fan-in-2 neuron is centred at the first step, (x, -x), and so is its update, (a, -a): the
    # update is radial, so the neuron keeps its direction and norm (an uncentred update turned it off the zero-mean line)
    torch.manual_seed(0)
    layer = nn.Linear(2, 3, bias=False)
    opt = LionAR([{"params": [layer.weight], "neuron_dim": 0, "zero_mean": True}], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        layer.weight.grad = torch.randn(3, 2)
        opt.step()
        w = layer.weight.detach().double()
        torch.testing.assert_close(w.sum(dim=1), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        w.norm(dim=1, keepdim=True), opt.state[layer.weight]["norm"].double(), rtol=1e-6, atol=0
    )


def test_relative_representation_change_of_a_transposed_weight_equals_a_float64_reference():
    from hf_ext.optim import relative_representation_change

    torch.manual_seed(0)
    x = torch.randn(7, 3, dtype=torch.float64)
    w0 = torch.randn(3, 5, dtype=torch.float64)  # (in, out): HF Conv1D
    w1 = w0 + 0.1 * torch.randn(3, 5, dtype=torch.float64)
    expected = float((x @ (w1 - w0)).norm() / (x @ w0).norm())
    assert abs(relative_representation_change(x, w0, w1, transposed=True) - expected) < 1e-12
    assert abs(relative_representation_change(x, w0.T, w1.T) - expected) < 1e-12


def test_relative_representation_change_refuses_a_weight_that_is_not_2_dim():
    from hf_ext.optim import relative_representation_change

    with pytest.raises(ValueError, match="2-dim weight"):
        relative_representation_change(torch.randn(4, 3), torch.randn(2, 3, 3), torch.randn(2, 3, 3))


def test_lion_ar_update_norm_decay_scales_the_angle_by_the_bias_corrected_rms():
    # theta = angle * ||u_perp|| / sqrt(EMA(||u_perp||^2) / (1 - d^t)): at the first step the bias-corrected EMA is
    # ||u_perp||^2 itself, so every neuron turns by exactly `angle`; at the second step by
    # angle * n2 / sqrt((d (1 - d) n1^2 + (1 - d) n2^2) / (1 - d^2)), with n_t the tangential norm of step t's update
    torch.manual_seed(0)
    angle, d = 0.05, 0.9
    layer = nn.Linear(8, 4, bias=False)
    opt = LionAR(
        [{"params": [layer.weight], "neuron_dim": 0, "zero_mean": False}],
        lr=1e-3,
        weight_decay=0.1,
        angle=angle,
        update_norm_decay=d,
    )

    def tangential_norm(w, u):
        w, u = w.double(), u.double()
        return (u - (u * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w).norm(dim=1)

    def turned(w0, w1):
        cos = (w0 * w1).sum(1) / (w0.norm(dim=1) * w1.norm(dim=1))
        return torch.arccos(cos.clamp(-1, 1))

    n1 = None
    for step in (1, 2):
        w0 = layer.weight.detach().double().clone()
        layer.weight.grad = torch.randn(4, 8)
        # the Lion direction sign(b1 m + (1 - b1) g) of this step, from the momentum before it
        m = opt.state[layer.weight].get("exp_avg", torch.zeros(4, 8))
        u = torch.sign(0.9 * m + 0.1 * layer.weight.grad)
        n = tangential_norm(w0, u)
        opt.step()
        got = turned(w0, layer.weight.detach().double())
        if step == 1:
            expected = torch.full((4,), angle, dtype=torch.float64)
        else:
            ema = d * (1 - d) * n1**2 + (1 - d) * n**2
            expected = angle * n / (ema / (1 - d**2)).sqrt()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
        n1 = n


def test_solve_cubic_exact_solves_with_the_symmetric_part_of_an_asymmetric_hessian():
    # the cubic model m(h) = g.h + h.H h / 2 + M/6 |h|^3 depends on H only through (H + H^T) / 2: an asymmetric H
    # (a finite-difference Hessian) gives the step of its symmetric part, not of its lower triangle
    from hf_ext.optim import solve_cubic_exact

    g = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    S = torch.tensor([[2.0, 0.3, -0.1], [0.3, 1.0, 0.2], [-0.1, 0.2, 0.5]], dtype=torch.float64)
    skew = torch.tensor([[0.0, 0.8, -0.6], [-0.8, 0.0, 0.4], [0.6, -0.4, 0.0]], dtype=torch.float64)
    h = solve_cubic_exact(g, S + skew, M=1.0)
    torch.testing.assert_close(h, solve_cubic_exact(g, S, M=1.0), rtol=0, atol=1e-10)
    # first-order condition of the cubic model: g + S h + (M / 2) |h| h = 0
    torch.testing.assert_close(g + S @ h + 0.5 * h.norm() * h, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-8)


def test_solve_cubic_lanczos_keeps_its_basis_orthogonal_over_a_full_ill_conditioned_space():
    # mu46's surviving B25: Lanczos without its re-orthogonalisation loses orthogonality once extreme eigenvalues
    # converge (ghost copies in T, V no longer orthonormal); over a full 200-dim Krylov space of a Hessian with
    # eigenvalues from 1e-3 to 1e3 and two negative ones the step is then 1.4e-2 off the exact solver's (6.8e-14 with it)
    from hf_ext.optim import solve_cubic_exact, solve_cubic_lanczos

    gen = torch.Generator().manual_seed(0)
    d = 200
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    eig = torch.cat(
        [torch.tensor([-2.0, -0.5], dtype=torch.float64), torch.logspace(-3, 3, d - 2, dtype=torch.float64)]
    )
    H = Q @ torch.diag(eig) @ Q.T
    H = (H + H.T) / 2
    g = torch.randn(d, generator=gen, dtype=torch.float64)
    exact = solve_cubic_exact(g, H, 1.0)
    h, calls = solve_cubic_lanczos(g, lambda v: H @ v, 1.0, krylov_dim=d)
    assert calls == d
    assert float((h - exact).norm() / exact.norm()) < 1e-8
