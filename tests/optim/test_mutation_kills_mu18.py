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
