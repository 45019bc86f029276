"""Mutation run 28: HyperINF's default Schulz budget is the documented 100 iterations (docs/hyperinf.md).

A damped GFIM of condition number ~1e10 needs 37 Newton-Schulz iterations from the default `X_0 = I/||A||_F` to reach
the default tolerance 1e-6; with the defaults it must converge (no `SchulzConvergenceWarning`) and give the scores of a
dense float64 solve. A budget of 30 (the reference's) stopped short and warned.
"""

import warnings

import torch

from hf_ext.hyperinf import InfluenceConfig
from hf_ext.hyperinf.influence import InfluenceEngine, _tensor_source
from hf_ext.hyperinf.linalg import SchulzConvergenceWarning


def test_default_schulz_budget_converges_where_thirty_iterations_do_not():
    assert InfluenceConfig().schulz_iterations == 100
    gen = torch.Generator().manual_seed(0)
    n, r, d = 20, 2, 6
    scale = torch.tensor([1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5], dtype=torch.float64)  # ill-conditioned GFIM
    train = torch.randn(n, r, d, generator=gen, dtype=torch.float64) * scale
    val = torch.randn(3, r, d, generator=gen, dtype=torch.float64) * scale
    damping = 1e-10
    engine = InfluenceEngine(InfluenceConfig(method="hyperinf", damping=damping, dtype=torch.float64), {"l": (r, d)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SchulzConvergenceWarning)
        engine.fit(_tensor_source({"l": train}, 8))
        scores = engine.scores(_tensor_source({"l": val}, 8))
    info = engine.layers["l"].info
    assert info["schulz_converged"] and 30 < info["schulz_iterations"] <= 100
    # independent reference: v (G + lambda I)^-1 by a dense float64 solve, I(z_k) = -<g_k, that>
    gfim = torch.einsum("nri,nrj->ij", train, train) / n
    v = val.mean(dim=0)
    hvp = torch.linalg.solve(gfim + damping * torch.eye(d, dtype=torch.float64), v.T).T
    expected = -torch.einsum("nrd,rd->n", train, hvp)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-12)
