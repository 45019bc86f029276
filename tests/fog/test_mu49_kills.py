"""Mutation pass mu49: tests that kill surviving mutants of the FOG modeling code (hf_ext.models.fog.modeling_fog)."""

import pytest
import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM


def _model(qk_norm: str) -> FogForCausalLM:
    torch.manual_seed(0)
    config = FogConfig(
        vocab_size=61,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        qk_norm=qk_norm,
        freeze_qk_gain=False,
    )
    return FogForCausalLM(config).eval()


@pytest.mark.parametrize("qk_norm", ["rms", "dyt"])
def test_keys_go_through_their_own_qk_norm(qk_norm):
    """The keys are normalised by `k_norm`, the queries by `q_norm`: with trainable gains the two differ once trained,
    so `k_norm` must change the output and get a gradient (at initialisation both modules hold the same values, so a
    forward that normalised the keys with `q_norm` gave the same logits)."""
    model = _model(qk_norm)
    ids = torch.tensor([[3, 17, 5, 42, 8, 11, 29]])
    attn = model.model.layers[0].self_attn
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert attn.k_norm.weight.grad is not None and float(attn.k_norm.weight.grad.abs().sum()) > 0
    with torch.no_grad():
        before = model(input_ids=ids).logits
        attn.k_norm.weight.mul_(3.0)
        after = model(input_ids=ids).logits
        attn.k_norm.weight.div_(3.0)
        attn.q_norm.weight.mul_(3.0)
        q_scaled = model(input_ids=ids).logits
    assert not torch.allclose(before, after)
    # for the RMS norm, scaling the key gain or the query gain scales every attention logit alike
    if qk_norm == "rms":
        torch.testing.assert_close(after, q_scaled)
