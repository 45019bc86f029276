"""Mutation run 18: the cubic sub-problem solvers' Cauchy point, gradient-descent step size and symmetrisation of H,
against closed forms and brute force (m(h) = g.h + h.Hh/2 + M/6 |h|^3).
"""

import math

import pytest
import torch

from hf_ext.optim.cubic_newton import cubic_model_value, solve_cubic_exact, solve_cubic_gd


def test_gd_solver_without_iterations_returns_the_cauchy_point():
    # along -g the model is -r |g| + r^2 k / 2 + M r^3 / 6 with k = g.Hg/|g|^2: minimum at
    # R = (-k + sqrt(k^2 + 2 M |g|)) / M; H = diag(2, 3), g = (1, 0) -> k = 2, R = -2 + sqrt(6)
    H = torch.diag(torch.tensor([2.0, 3.0], dtype=torch.float64))
    g = torch.tensor([1.0, 0.0], dtype=torch.float64)
    h, _ = solve_cubic_gd(g, lambda v: H @ v, 1.0, lipschitz=3.0, max_iter=0, perturbation=0.0)
    R = -2.0 + math.sqrt(6.0)
    assert torch.allclose(h, torch.tensor([-R, 0.0], dtype=torch.float64), rtol=0, atol=1e-14)
    radii = [i / 1000 for i in range(3000)]  # brute force over the ray
    best = min(radii, key=lambda r: -r + r * r + r**3 / 6)
    assert abs(best - R) < 1e-3


def test_gd_solver_step_shrinks_with_the_cubic_curvature():
    # H = 0, g = 1, M = 100: the minimiser of h + M/6 |h|^3 is -sqrt(2 / M); the model's curvature M |h| (= 14 there)
    # dwarfs the given bound L = 1e-3 on ||H||, so a step of 0.5 / L alone would overshoot and never settle
    g = torch.tensor([1.0], dtype=torch.float64)
    h, _ = solve_cubic_gd(g, lambda v: 0.0 * v, 100.0, lipschitz=1e-3, max_iter=500, tol=1e-8)
    assert float(h) == pytest.approx(-math.sqrt(2.0 / 100.0), rel=1e-6)


def test_exact_solver_uses_the_symmetric_part_of_a_non_symmetric_H():
    # h.H h only sees S = (H + H^T)/2; the global minimiser satisfies (S + M |h|/2 I) h = -g with S + M |h|/2 I >= 0
    H = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    S = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    g = torch.tensor([1.0, -0.5], dtype=torch.float64)
    h = solve_cubic_exact(g, H, M=1.0)
    shift = float(h.norm()) / 2.0
    assert torch.allclose((S + shift * torch.eye(2, dtype=torch.float64)) @ h, -g, rtol=0, atol=1e-10)
    assert float(torch.linalg.eigvalsh(S).min()) + shift >= 0
    # and no point of a grid around it has a lower model value
    value = cubic_model_value(g, S @ h, h, 1.0)
    grid = torch.stack(torch.meshgrid(torch.linspace(-3, 3, 241), torch.linspace(-3, 3, 241), indexing="ij"), -1)
    grid = grid.reshape(-1, 2).double()
    values = grid @ g + 0.5 * ((grid @ S) * grid).sum(1) + grid.norm(dim=1) ** 3 / 6.0
    assert value <= float(values.min()) + 1e-12


def test_lion_ar_leaves_a_neuron_parallel_to_its_update_in_place():
    # rows (1,1,1,1) and (2,2,2,2) with a positive gradient everywhere: the sign update is (1,1,1,1) per row, parallel
    # to the weight, so there is no direction to rotate towards; the neuron must stay as it is (finite, same norm)
    from hf_ext.optim import LionAR

    model = torch.nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0] * 4, [2.0] * 4]))
    opt = LionAR(model, lr=1e-2, weight_decay=1.0, zero_mean=False)
    before = model.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        model(torch.ones(3, 4)).sum().backward()  # d/dW = 3 everywhere
        opt.step()
        torch.testing.assert_close(model.weight.detach(), before, rtol=1e-6, atol=0)


def test_lion_a_snr_correction_estimates_from_the_second_step_also_with_a_small_beta2():
    # With b2 = 0.002 the momentum constant c_t = (1-b)/(1+b) (1+b^t)/(1-b^t) is about 0.996 from t = 2 on, far from 1:
    # the SNR is estimated (only c = 1, the first step, gives no estimate). A constant gradient is pure signal
    # (||m_hat||^2 = ||g||^2, no noise), so SNR -> infinity and the factor 1/sqrt(1 + SNR) stops the step.
    from hf_ext.optim import LionA

    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = LionA([p], lr=0.1, betas=(0.9, 0.002), weight_decay=0.0, snr_correction=True)
    positions = []
    for _ in range(3):
        opt.zero_grad()
        p.grad = torch.tensor([1.0, 0.5], dtype=torch.float64)
        opt.step()
        positions.append(p.detach().clone())
    assert torch.allclose(positions[0], torch.tensor([-0.1, -0.1], dtype=torch.float64))  # step 1: factor 1
    # steps 2, 3: factor ~ 0 (the statistics are summed in float32, so the noise estimate is rounding, not 0)
    assert float((positions[2] - positions[0]).abs().max()) < 0.01 * 2 * 0.1
    assert opt.state[p]["snr"] > 1e4


def test_lion_ar_after_a_zero_lr_zero_gradient_first_step_initialises_like_an_immediate_start():
    # a first step at lr 0 with all-zero gradients (DCP's load template, a warmup from 0) must leave the run as if it
    # had not happened: the next real step centres the neurons and records their norms, like a fresh optimizer
    from hf_ext.optim import LionAR

    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    with torch.no_grad():
        a.weight.add_(0.5)  # rows far from zero mean: centring moves them
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = LionAR(a, lr=1e-2, weight_decay=1.0), LionAR(b, lr=1e-2, weight_decay=1.0)
    for group in opt_a.param_groups:
        group["lr"] = 0.0
    for p in a.parameters():
        p.grad = torch.zeros_like(p)
    opt_a.step()
    assert torch.equal(a.weight, b.weight)  # the template step moved nothing
    for group in opt_a.param_groups:
        group["lr"] = 1e-2
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    assert float(b.weight.detach().mean(dim=1).abs().max()) < 1e-6  # the immediate start centred the neurons
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-6, atol=1e-7)


def test_lanczos_stops_when_the_krylov_space_is_invariant_also_at_a_large_hessian_scale():
    # g lies in the span of 2 eigenvectors of H (eigenvalues 1e8, 3e8): span{g, Hg, ...} has dimension 2, so Lanczos
    # must stop after 2 HVPs; its breakdown test is relative to the Hessian's scale (the residual is rounding of order
    # 1e-16 * 1e8 there, above an absolute 1e-10)
    from hf_ext.optim.cubic_newton import solve_cubic_lanczos

    lam = torch.tensor([1e8, 3e8, 2e8, 5e8, 4e8, 6e8], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    H = q @ torch.diag(lam) @ q.T
    g_eig = torch.tensor([1e3, 1e3, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    h, calls = solve_cubic_lanczos(q @ g_eig, lambda v: H @ v, 1.0, krylov_dim=6)
    assert calls == 2
    # closed form in the eigenbasis: h_i = -g_i / (lam_i + M r / 2) with r = ||h|| (fixed point, contracting here)
    r = 0.0
    for _ in range(50):
        r = float((g_eig / (lam + r / 2.0)).norm())
    torch.testing.assert_close(h, q @ (-g_eig / (lam + r / 2.0)), rtol=1e-9, atol=1e-20)
