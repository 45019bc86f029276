"""The public dense solvers and `InfluenceConfig.max_exact_dim` refuse bad input by name.

Each case used to be accepted and return a wrong value: `datainf_hvp` inf / a wrong finite value / NaN for a damping
of 0 / -1 / NaN, and an answer for a `v` of another shape with as many entries; `lissa_hvp` NaN for a NaN damping,
`v/s` for `num_iterations=-3`, zeros for `scale=inf` and values about 1e3 off for a scale the engine refuses as
diverging; a NaN `max_exact_dim` turned the size cap of `exact` off."""

import math

import numpy as np
import pytest
import torch

from hf_ext.hyperinf import (
    InfluenceConfig,
    datainf_hvp,
    fim,
    influence_from_gradients,
    lissa_hvp,
)


def _problem():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(20, 2, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    f = fim(g)
    return g, v, f, (lambda x: (f @ x.reshape(-1)).reshape(x.shape))


@pytest.mark.parametrize("damping", [0.0, -1.0, math.nan, math.inf])
def test_datainf_hvp_refuses_a_damping_that_is_not_finite_and_positive(damping):
    g, v, _, _ = _problem()
    with pytest.raises(ValueError, match=r"`damping` must be a finite positive number"):
        datainf_hvp(v, g, damping)


def test_datainf_hvp_refuses_gradients_not_shaped_like_v():
    g, v, _, _ = _problem()
    with pytest.raises(ValueError, match=r"`grads` must have shape \(n, \*v.shape\) = \(n, 3, 2\).*got \(20, 2, 3\)"):
        datainf_hvp(v.reshape(3, 2), g, 0.1)  # as many entries: it used to be accepted
    with pytest.raises(ValueError, match=r"`grads` must have shape"):
        datainf_hvp(v, g[:0], 0.1)
    assert datainf_hvp(v, g, 0.1).shape == v.shape


@pytest.mark.parametrize("damping", [-0.5, math.nan, math.inf])
def test_lissa_hvp_refuses_a_damping_that_is_not_finite_and_non_negative(damping):
    _, v, _, matvec = _problem()
    with pytest.raises(ValueError, match=r"`damping` must be a finite non-negative number"):
        lissa_hvp(v, matvec, damping, 10.0)


def test_lissa_hvp_with_zero_damping_solves_a_definite_system():
    """LiSSA does not divide by the damping: 0 is valid and exact for a positive-definite A (it was documented so)."""
    torch.manual_seed(0)
    b = torch.randn(5, 5, dtype=torch.float64)
    a = b @ b.T + torch.eye(5, dtype=torch.float64)
    v = torch.randn(5, dtype=torch.float64)
    scale = float(torch.linalg.eigvalsh(a).max()) * 1.01
    got = lissa_hvp(v, lambda x: a @ x, 0.0, scale, num_iterations=5000)
    torch.testing.assert_close(got, torch.linalg.solve(a, v), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scale", [math.inf, math.nan, -1.0, 0.0])
def test_lissa_hvp_refuses_a_scale_that_is_not_finite_and_positive(scale):
    _, v, _, matvec = _problem()
    with pytest.raises(ValueError, match=r"`scale` must be a finite positive number"):
        lissa_hvp(v, matvec, 0.1, scale)


@pytest.mark.parametrize("num_iterations", [-3, 0, True, 2.0])
def test_lissa_hvp_refuses_num_iterations_that_is_not_a_positive_int(num_iterations):
    _, v, _, matvec = _problem()
    with pytest.raises(ValueError, match=r"`num_iterations` must be a positive int"):
        lissa_hvp(v, matvec, 0.1, 10.0, num_iterations=num_iterations)


def test_lissa_hvp_refuses_a_matvec_that_changes_the_shape():
    _, v, f, _ = _problem()
    with pytest.raises(ValueError, match=r"`matvec` must return a tensor shaped like `v` \(2, 3\), got \(6,\)"):
        lissa_hvp(v, lambda x: f @ x.reshape(-1), 0.1, 10.0)


def test_lissa_hvp_refuses_a_diverging_scale_as_the_engine_does_and_converges_with_a_valid_one():
    g, v, f, matvec = _problem()
    lam = 0.1
    top = float(torch.linalg.eigvalsh(f)[-1]) + lam
    small = 0.3 * top  # below half the top eigenvalue of the damped Fisher: the series diverges
    with pytest.raises(ValueError, match=r"LiSSA diverged with scale=.*half the largest eigenvalue"):
        lissa_hvp(v, matvec, lam, small)
    with pytest.raises(ValueError, match="LiSSA diverged"):  # the engine refuses the same scale
        influence_from_gradients({"a": g}, {"a": v[None]}, method="lissa", damping=lam, lissa_scale=small)
    exact = torch.linalg.solve(f + lam * torch.eye(6, dtype=f.dtype), v.reshape(-1)).reshape(v.shape)
    # between half the top eigenvalue and the trace bound: the series converges and is accepted
    for scale in (0.6 * top, float(torch.trace(f)) + lam):
        torch.testing.assert_close(lissa_hvp(v, matvec, lam, scale, num_iterations=3000), exact)


@pytest.mark.parametrize("value", [math.nan, 0, -5, 2.5])
def test_max_exact_dim_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match=r"`max_exact_dim` must be a positive int"):
        InfluenceConfig(method="exact", max_exact_dim=value).validate()
    with pytest.raises(TypeError, match="max_exact_dim"):
        InfluenceConfig(method="exact", max_exact_dim=True).validate()
    InfluenceConfig(method="exact", max_exact_dim=np.int64(8)).validate()


def test_a_nan_max_exact_dim_no_longer_turns_the_size_cap_off():
    g, v, _, _ = _problem()
    with pytest.raises(ValueError, match="max_exact_dim"):
        influence_from_gradients(
            {"a": g}, {"a": v[None]}, method="exact", exact_curvature="fim", max_exact_dim=math.nan
        )
