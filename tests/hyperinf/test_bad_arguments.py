"""Influence options that used to be accepted and gave silently wrong (or NaN) scores are refused by name."""

import pytest
import torch

from hf_ext.hyperinf import InfluenceConfig, influence_from_gradients, schulz_inverse

NAN, INF = float("nan"), float("inf")


def _grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    train = {"a": torch.randn(12, 2, 5, generator=g, dtype=torch.float64)}
    val = {"a": torch.randn(3, 2, 5, generator=g, dtype=torch.float64)}
    return train, val


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(schulz_tol=INF), ValueError, "`schulz_tol`"),  # used to stop at X_0 and report "converged"
        (dict(schulz_tol=2.0), ValueError, "`schulz_tol`"),
        (dict(schulz_alpha=INF), ValueError, "`schulz_alpha`"),  # used to fail only after the gradient pass
        (dict(method="lissa", lissa_scale=INF), ValueError, "`lissa_scale`"),  # used to give all-zero scores
        (dict(damping="0.1"), TypeError, "`damping`"),
        (dict(damping=True), TypeError, "`damping`"),
        (dict(damping_scale=None), TypeError, "`damping_scale`"),
        (dict(schulz_extra_damping="1"), TypeError, "`schulz_extra_damping`"),
        (dict(schulz_alpha="1e-3"), TypeError, "`schulz_alpha`"),
        (dict(lissa_scale="1"), TypeError, "`lissa_scale`"),
        (dict(schulz_iterations=True), TypeError, "`schulz_iterations`"),
        (dict(lissa_iterations=True), TypeError, "`lissa_iterations`"),
        (dict(batch_size=True), ValueError, "`batch_size`"),
    ],
)
def test_bad_options_are_refused_naming_the_option(kw, error, match):
    train, val = _grads()
    with pytest.raises(error, match=match):
        influence_from_gradients(train, val, **kw)


def test_lissa_divergence_is_an_error_not_nan_scores():
    """A too small `lissa_scale` used to return NaN/inf scores without a word."""
    train, val = _grads()
    with pytest.raises(ValueError, match="lissa_scale"):
        influence_from_gradients(train, val, method="lissa", lissa_scale=1e-6)


@pytest.mark.parametrize("kw", [dict(tol=INF), dict(tol=1.0), dict(alpha=INF), dict(num_iterations=True)])
def test_schulz_inverse_refuses_meaningless_tolerance_and_scale(kw):
    a = torch.eye(4, dtype=torch.float64) * 3
    with pytest.raises(ValueError, match=next(iter(kw))):
        schulz_inverse(a, **kw)


def test_valid_edge_values_stay_valid():
    import numpy as np

    InfluenceConfig(damping=0.0, method="tracin").validate()
    InfluenceConfig(damping=np.float32(0.1), schulz_tol=0.5, schulz_iterations=0).validate()
    train, val = _grads()
    scores = influence_from_gradients(train, val, method="lissa", lissa_scale=1e6, batch_size=5)
    assert torch.isfinite(scores).all()


def test_estimator_refuses_a_non_callable_data_collator():
    """A string collator used to be accepted and to fail with "'str' object is not callable" inside `fit`."""
    from hf_ext.hyperinf import InfluenceEstimator

    with pytest.raises(TypeError, match="`data_collator`"):
        InfluenceEstimator(torch.nn.Linear(2, 2), data_collator="pad")
    with pytest.raises(ValueError, match="`batch_size`"):
        InfluenceEstimator(torch.nn.Linear(2, 2), batch_size=True)
