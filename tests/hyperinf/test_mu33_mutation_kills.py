"""Mutation kill (mu33): `scores_from_hvp` upcasts a vector it is given directly (not one `inverse_hvp` returned, which
is already in `accumulate_dtype`) to the training gradients' dtype."""

import torch

from hf_ext.hyperinf import InfluenceConfig, InfluenceEngine


def test_scores_from_hvp_takes_a_half_precision_vector_of_its_own():
    gen = torch.Generator().manual_seed(0)
    train = (0.1 * torch.randn(32, 4, 16, generator=gen)).bfloat16()
    engine = InfluenceEngine(InfluenceConfig(method="tracin", dtype=torch.bfloat16), {"a": (4, 16)})
    engine.fit([{"a": train}])
    hvp = (0.1 * torch.randn(4, 16, generator=gen)).bfloat16()
    got = engine.scores_from_hvp({"a": hvp})
    expected = -(train.double().reshape(32, -1) @ hvp.double().reshape(-1))
    error = float((got.double() - expected).abs().max() / expected.abs().max())
    assert error < 0.01, error
