"""Mutation-kill tests of audit pass 40 (mu50): behaviour that no existing test pinned."""

from types import SimpleNamespace

import torch


def test_fp8_attention_softcap_divides_the_scores_by_the_cap_before_the_tanh():
    # Gemma 2's softcap is `c * tanh(scores / c)`. The existing check uses c = 1, where `c * tanh(scores)` is the same.
    # Query and key entries in {-2, -1, 0, 1, 2} (amax 2) are exact in FP8 E4M3 at the per-tensor scale, so QK^T and the
    # attention weights equal the eager reference's up to float32 rounding, for a cap other than 1
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    from hf_ext.fp8 import fp8_attention_forward

    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randint(-2, 3, (1, 2, 6, 8), generator=gen).float() for _ in range(2))
    q[0, 0, 0, 0], k[0, 0, 0, 0] = 2.0, 2.0  # amax 2 in both
    v = torch.randn(1, 2, 6, 8, generator=gen)
    mask = torch.triu(torch.full((6, 6), float("-inf")), 1)[None, None]
    module = SimpleNamespace(num_key_value_groups=1, training=False)
    for cap in (0.5, 3.0):
        _, ref = eager_attention_forward(module, q, k, v, mask, scaling=0.25, softcap=cap)
        _, got = fp8_attention_forward(module, q, k, v, mask, scaling=0.25, softcap=cap)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
