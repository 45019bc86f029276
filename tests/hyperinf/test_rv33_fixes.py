"""Audit rv33 fixes."""

import pytest
import torch

from hf_ext.hyperinf import InfluenceConfig, InfluenceEngine


@pytest.mark.parametrize("method", ["hyperinf", "datainf", "lissa", "tracin"])
def test_inverse_hvp_and_scores_from_hvp_take_a_vector_in_a_half_precision_config_dtype(method):
    """F1: since the sums over examples are accumulated in at least float32 (hi31 F1), the training gradients these two
    public steps of `scores` meet are float32 for a bfloat16 `dtype`, and a vector in the config's own dtype failed with
    a raw 'expected m1 and m2 to have the same dtype' RuntimeError (it worked before). The vector is upcast as the
    gradients are."""
    gen = torch.Generator().manual_seed(0)
    train = (0.1 * torch.randn(64, 4, 16, generator=gen)).bfloat16()
    evals = (0.1 * torch.randn(8, 4, 16, generator=gen)).bfloat16()
    engine = InfluenceEngine(InfluenceConfig(method=method, dtype=torch.bfloat16, damping=0.1), {"a": (4, 16)})
    engine.fit([{"a": train}])
    expected = engine.scores([{"a": evals}])
    v = {"a": engine.mean_gradient([{"a": evals}])["a"].bfloat16()}  # a user's vector, in the config's dtype
    got = engine.scores_from_hvp(engine.inverse_hvp(v))
    assert got.dtype == torch.bfloat16
    error = float((got.double() - expected.double()).abs().max() / expected.double().abs().max())
    assert error < 0.02, error  # v rounded to bfloat16 only
