"""Mutation run 18: the documented defaults of the original DoGE step, `mu=0.01` and `score_max=5.0`.

`doge_domain_weights` computes `score_k = lr * <g_k, g_tgt> / mean_j ||g_j||`, clips it to
`[lr * score_min, lr * score_max]` and returns `softmax(log alpha + score / mu)`. Every existing test passes `mu` and
`score_max` explicitly, so the defaults (DoGE's `config/doge.json`) are checked here against that closed form.
"""

import math

import pytest
import torch

from hf_ext.grape.rules import doge_domain_weights


def _two_domain_softmax(delta: float) -> list[float]:
    """softmax(log(0.5, 0.5) + (delta, 0))."""
    return [math.exp(delta) / (math.exp(delta) + 1.0), 1.0 / (math.exp(delta) + 1.0)]


def test_default_mu_is_one_hundredth():
    # score_0 = 1e-3 * 1 / (1 + 1e-6) (inside the clip range [0, 5e-3]), divided by mu = 0.01
    out = doge_domain_weights([0.5, 0.5], [1.0, 0.0], [1.0, 1.0], 1e-3)
    expected = _two_domain_softmax(1e-3 / (1.0 + 1e-6) / 0.01)
    assert out.tolist() == pytest.approx(expected, rel=1e-9)
    assert torch.allclose(out, doge_domain_weights([0.5, 0.5], [1.0, 0.0], [1.0, 1.0], 1e-3, mu=0.01))


def test_default_score_max_clips_at_five_learning_rates():
    # score_0 = 1e-3 * 100 / (1 + 1e-6) = 0.1 is clipped to lr * 5 = 5e-3; / mu = 0.5
    out = doge_domain_weights([0.5, 0.5], [100.0, 0.0], [1.0, 1.0], 1e-3)
    assert out.tolist() == pytest.approx(_two_domain_softmax(0.5), rel=1e-9)
