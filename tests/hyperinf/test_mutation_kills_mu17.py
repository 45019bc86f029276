"""Mutation run 17: an explicit `damping` is the damping every layer uses.

`InfluenceConfig(damping=...)` (also `influence_from_gradients(..., damping=...)`) replaces the per-layer rule
`damping_scale * mean squared gradient entry`. Ignoring it in `fit` left all earlier tests passing; here the exact
method is compared with the float64 closed form `-<(G + lambda I)^-1 v, g_k>` at `lambda = 0.5`, far from what the
per-layer rule gives, and the engine's layers must record that damping.
"""

import pytest
import torch

from hf_ext.hyperinf import InfluenceConfig, InfluenceEngine, influence_from_gradients
from hf_ext.hyperinf.influence import _tensor_source


def _grads(seed):
    gen = torch.Generator().manual_seed(seed)
    train = {"l": torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)}
    val = {"l": torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)}
    return train, val


def test_exact_influence_uses_the_given_damping():
    train, val = _grads(0)
    lam = 0.5
    g = train["l"]
    curvature = torch.einsum("nri,nrj->ij", g, g) / g.shape[0]
    v = val["l"].mean(0)
    expected = -torch.einsum("nrd,rd->n", g, v @ torch.linalg.inv(curvature + lam * torch.eye(3, dtype=torch.float64)))
    got = influence_from_gradients(train, val, "exact", damping=lam, dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # the per-layer rule gives another damping here, hence other scores: the check above sees the difference
    rule = 0.1 * float(g.square().mean())
    assert abs(rule - lam) > 0.3
    without = influence_from_gradients(train, val, "exact", dtype=torch.float64)
    assert (without - expected).abs().max() > 1e-2


@pytest.mark.parametrize("method", ["hyperinf", "datainf", "lissa", "exact"])
def test_every_layer_of_a_fitted_engine_gets_the_given_damping(method):
    train, _ = _grads(1)
    train["m"] = 3.0 * train["l"][:, :, :2].contiguous()
    engine = InfluenceEngine(
        InfluenceConfig(method=method, damping=0.5, dtype=torch.float64), {"l": (2, 3), "m": (2, 2)}
    )
    engine.fit(_tensor_source(train, 4))
    assert {name: layer.damping for name, layer in engine.layers.items()} == {"l": 0.5, "m": 0.5}
    assert {name: layer.info["damping"] for name, layer in engine.layers.items()} == {"l": 0.5, "m": 0.5}
    # without it, each layer gets its own damping from the rule
    engine = InfluenceEngine(InfluenceConfig(method=method, dtype=torch.float64), {"l": (2, 3), "m": (2, 2)})
    engine.fit(_tensor_source(train, 4))
    assert engine.layers["l"].damping == pytest.approx(0.1 * float(train["l"].square().mean()))
    assert engine.layers["m"].damping == pytest.approx(0.1 * float(train["m"].square().mean()))
