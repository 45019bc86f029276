"""Update rules on fixed vectors: exact outputs, invariances, signs, simplex, baselines."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_ext.grape import (
    doge_domain_weights,
    doremi_domain_weights,
    doremi_excess_loss,
    ema_update,
    exponentiated_step,
    grape_domain_weights,
    grape_task_weights,
    resolve_step_size,
    smooth_weights,
    task_objective,
)


def test_task_step_exact_softmax_with_default_smoothing():
    # log z = log .5 - 5 * [0.2, -0.1]  ->  z_1 = 1 / (1 + e^1.5), then (1 - 1e-3) z + 1e-3 / 2.
    z = grape_task_weights([0.5, 0.5], [0.2, -0.1], step_size=5.0)
    assert z.dtype == torch.float64
    torch.testing.assert_close(z, torch.tensor([0.18274309828255, 0.81725690171745], dtype=torch.float64))


def test_task_step_exact_without_smoothing():
    z = grape_task_weights([0.5, 0.5], [0.2, -0.1], step_size=5.0, smoothing=0.0)
    torch.testing.assert_close(z, torch.tensor([0.18242552380635635, 0.8175744761936437], dtype=torch.float64))


def test_domain_step_exact_softmax_and_no_default_smoothing():
    # alpha = [0.2, 0.3, 0.5], dots = [1, 0, -1], mu = 1.5 -> alpha_k * exp(1.5 dot_k) / sum.
    a = grape_domain_weights([0.2, 0.3, 0.5], [1.0, 0.0, -1.0], step_size=1.5)
    raw = [0.2 * math.exp(1.5), 0.3, 0.5 * math.exp(-1.5)]
    expected = torch.tensor([r / sum(raw) for r in raw], dtype=torch.float64)
    torch.testing.assert_close(a, expected, rtol=0, atol=1e-15)


def test_zero_step_changes_nothing():
    w = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    torch.testing.assert_close(grape_domain_weights(w, [3.0, -2.0, 1.0], 0.0), w, rtol=0, atol=1e-15)
    torch.testing.assert_close(grape_task_weights(w, [3.0, -2.0, 1.0], 0.0, smoothing=0.0), w, rtol=0, atol=1e-15)
    # With smoothing but uniform weights, mu = 0 keeps them uniform.
    u = torch.full((4,), 0.25, dtype=torch.float64)
    torch.testing.assert_close(grape_task_weights(u, [1.0, 2.0, 3.0, 4.0], 0.0), u, rtol=0, atol=1e-15)
    assert resolve_step_size(0.0, "absolute") == 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.01, 1.0), min_size=2, max_size=8).flatmap(
        lambda w: st.tuples(
            st.just(w), st.lists(st.floats(-50, 50), min_size=len(w), max_size=len(w)), st.floats(0, 20)
        )
    ),
    st.floats(0.0, 0.5),
)
def test_outputs_lie_on_simplex(case, smoothing):
    weights, scores, step = case
    for fn in (grape_task_weights, grape_domain_weights):
        out = fn(weights, scores, step, smoothing)
        assert torch.isfinite(out).all()
        assert (out >= 0).all()
        assert abs(float(out.sum()) - 1.0) < 1e-9
        if smoothing > 0:
            assert float(out.min()) >= smoothing / len(weights) - 1e-12


def test_faster_improving_task_loses_weight():
    z0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    z1 = grape_task_weights(z0, [0.3, 0.05], step_size=5.0)  # task 0 improves faster
    assert z1[0] < z0[0] and z1[1] > z0[1]
    assert z1[0] / z1[1] < z0[0] / z0[1]


def test_aligned_domain_gains_weight():
    torch.manual_seed(0)
    g_tgt = torch.randn(100)
    g_aligned = g_tgt + 0.1 * torch.randn(100)
    g_orth = torch.randn(100)
    g_orth -= (g_orth @ g_tgt) / (g_tgt @ g_tgt) * g_tgt
    g_anti = -g_tgt
    dots = torch.stack([g_aligned @ g_tgt, g_orth @ g_tgt, g_anti @ g_tgt]) / 100
    a = grape_domain_weights(torch.full((3,), 1 / 3), dots, step_size=1.5)
    assert a[0] > 1 / 3 > a[2]
    assert abs(float(a[1]) - 1 / 3) < abs(float(a[0]) - 1 / 3)


def test_grad_log_loss_equals_grad_loss_over_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    params = list(model.parameters())

    def loss_fn():
        return torch.nn.functional.cross_entropy(model(x), y)

    loss = loss_fn()
    g_loss = torch.autograd.grad(loss, params)
    g_log = torch.autograd.grad(task_objective(loss_fn(), "grape"), params)
    for a, b in zip(g_log, g_loss):
        torch.testing.assert_close(a, b / loss.detach(), rtol=0, atol=1e-6)
    g_ema = torch.autograd.grad(task_objective(loss_fn(), "grape_ema", ema_loss=2.0), params)
    for a, b in zip(g_ema, g_loss):
        torch.testing.assert_close(a, b / 2.0, rtol=0, atol=1e-6)
    g_gap = torch.autograd.grad(task_objective(loss_fn(), "grape_gap"), params)
    for a, b in zip(g_gap, g_loss):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_step_size_conventions():
    assert resolve_step_size(5.0, "absolute", learning_rate=1e-3) == 5.0
    assert resolve_step_size(1e-3, "lr_scaled", learning_rate=2e-4) == pytest.approx(0.2)
    z_abs = grape_task_weights([0.5, 0.5], [1.0, 0.0], resolve_step_size(0.2, "absolute"), 0.0)
    z_lr = grape_task_weights([0.5, 0.5], [1.0, 0.0], resolve_step_size(1e-3, "lr_scaled", 2e-4), 0.0)
    torch.testing.assert_close(z_abs, z_lr)
    with pytest.raises(ValueError, match="learning_rate"):
        resolve_step_size(1.0, "lr_scaled")
    with pytest.raises(ValueError, match="mu must be > 0"):
        resolve_step_size(0.0, "lr_scaled", 1e-3)
    with pytest.raises(ValueError, match="convention"):
        resolve_step_size(1.0, "inverse")


def test_smoothing_and_ema():
    torch.testing.assert_close(smooth_weights([1.0, 0.0], 0.1), torch.tensor([0.95, 0.05], dtype=torch.float64))
    assert ema_update(None, 3.0, 0.9) == 3.0
    assert ema_update(float("nan"), 3.0, 0.9) == 3.0
    assert ema_update(3.0, 1.0, 0.9) == pytest.approx(2.8)
    with pytest.raises(ValueError, match="beta"):
        ema_update(1.0, 1.0, 1.0)


def test_doge_rule_matches_reference_formula():
    w = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    dots, norms, lr, mu = torch.tensor([0.4, -0.2, 0.1]), torch.tensor([1.0, 2.0, 3.0]), 1e-3, 0.05
    out = doge_domain_weights(w, dots, norms, lr, mu=mu, score_min=0.0, score_max=5.0)
    scores = (lr * dots.double() / (2.0 + 1e-6)).clamp(0.0, 5 * lr)
    expected = torch.softmax(torch.log(w) + scores / mu, 0)
    torch.testing.assert_close(out, expected)
    assert out[0] > w[0] and out[1] < w[1]


def test_doremi_rule_and_excess_loss():
    proxy = torch.tensor([[3.0, 1.0], [2.0, 4.0]])
    ref = torch.tensor([[2.0, 2.0], [2.5, 1.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # excess = [1, 0, 0, (masked)] -> mean over 3 tokens = 1/3
    assert float(doremi_excess_loss(proxy, ref, mask)) == pytest.approx(1 / 3)
    assert float(doremi_excess_loss(proxy, ref)) == pytest.approx((1 + 0 + 0 + 3) / 4)
    w = doremi_domain_weights([0.5, 0.5], [1.0, 0.0], eta=1.0, smoothing=0.0)
    torch.testing.assert_close(w, torch.tensor([math.e / (1 + math.e), 1 / (1 + math.e)], dtype=torch.float64))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="scores must have shape"):
        exponentiated_step([0.5, 0.5], [1.0], 1.0)
    with pytest.raises(ValueError, match="non-negative weights"):
        exponentiated_step([-0.5, 1.5], [1.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="step_size"):
        exponentiated_step([0.5, 0.5], [1.0, 1.0], -1.0)
    with pytest.raises(ValueError, match="smoothing"):
        exponentiated_step([0.5, 0.5], [1.0, 1.0], 1.0, smoothing=1.0)
    with pytest.raises(ValueError, match="variant"):
        task_objective(torch.tensor(1.0), "grape_fast")
    with pytest.raises(ValueError, match="ema_loss"):
        task_objective(torch.tensor(1.0), "grape_ema")
