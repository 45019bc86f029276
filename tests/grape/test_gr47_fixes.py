"""Pass-39 (gr47) fixes in hf_ext.grape.rules: 0-d numpy arrays as the rules' scalar arguments.

Pass 38 made 0-d numpy arrays usable as weight and score entries, and the rules already took 0-d tensors as scalar
arguments, but a 0-d numpy array (e.g. `tensor.numpy()` of a 0-d tensor) given as a step size, smoothing, learning
rate, mu, eta, clip bound, EMA coefficient or EMA loss was refused with "must be a real number, got array(1.)".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_ext.grape import rules

A = np.array


@pytest.mark.parametrize(
    "call",
    [
        lambda f: rules.exponentiated_step([1, 3], [0.0, 1.0], f(2.0), f(0.1)),
        lambda f: rules.smooth_weights([1, 3], f(0.5)),
        lambda f: rules.grape_task_weights([1, 1], [0.0, 1.0], f(1.5), f(1e-3)),
        lambda f: rules.grape_domain_weights([1, 1], [0.0, 1.0], f(1.5), f(0.01)),
        lambda f: rules.doremi_domain_weights([1, 3], [0.0, 1.0], f(1.0), f(1e-4)),
        lambda f: rules.doge_domain_weights([1, 3], [0.0, 1.0], [1.0, 1.0], f(1e-3), f(0.01), f(0.0), f(5.0)),
        lambda f: torch.tensor(rules.resolve_step_size(f(4.0), "lr_scaled", f(1e-3))),
        lambda f: torch.tensor(rules.ema_update(f(2.0), f(3.0), f(0.9))),
    ],
)
def test_zero_d_numpy_scalars_give_the_float_result(call):
    expected = call(float)
    got = call(A)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_grape_ema_objective_takes_a_zero_d_numpy_ema_loss():
    loss = torch.tensor(2.0, requires_grad=True)
    objective = rules.task_objective(loss, "grape_ema", A(4.0))
    assert isinstance(objective, torch.Tensor) and float(objective) == 0.5
    objective.backward()
    assert float(loss.grad) == 0.25


@pytest.mark.parametrize("bad", [A(True), A(1 + 1j), A("0.5"), A([1.0]), A(None)])
def test_other_arrays_are_still_refused_by_name(bad):
    with pytest.raises(TypeError, match="step_size must be a real number"):
        rules.exponentiated_step([1, 3], [0.0, 1.0], bad)
