"""Mutation run 16: a frozen QK-DyT gain is 1 whatever `qk_norm_init` says.

The reference's QK-DyT (`--qk-dyt`) has a gain only when gains are trained; with frozen gains it is `tanh(alpha * x)`
(docs/fog.md: "a frozen DyT gain is 1, as the reference's weight-less DyT"). `qk_norm_init` is the initial value of a
trainable DyT gain and the constant of a frozen RMS gain only (tests/fog/test_fog_config_checks_and_packing.py). A
frozen DyT gain that took `qk_norm_init` (0.5 here) would scale q and k by 0.5 and the attention logits by 0.25.
"""

import pytest
import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(
    vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2,
)  # fmt: skip


def _qk_norms(model):
    return [n for layer in model.model.layers for n in (layer.self_attn.q_norm, layer.self_attn.k_norm)]


def _dyt_model(frozen: bool, init: float = 0.5):
    torch.manual_seed(0)
    return FogForCausalLM(FogConfig(**TINY, qk_norm="dyt", freeze_qk_gain=frozen, qk_norm_init=init))


def test_frozen_dyt_gain_is_one_whatever_qk_norm_init(tmp_path):
    model = _dyt_model(frozen=True)
    for norm in _qk_norms(model):
        assert "weight" in dict(norm.named_buffers()) and not norm.weight.requires_grad
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        x = torch.randn(3, norm.weight.numel())
        torch.testing.assert_close(norm(x), torch.tanh(norm.alpha.detach() * x))  # tanh(alpha x), no factor
    model.save_pretrained(tmp_path)
    reloaded = FogForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.qk_norm_init == 0.5
    for norm in _qk_norms(reloaded):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))


def test_frozen_dyt_model_does_not_depend_on_qk_norm_init():
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        half = _dyt_model(frozen=True, init=0.5)(input_ids=ids).logits
        one = _dyt_model(frozen=True, init=1.0)(input_ids=ids).logits
    torch.testing.assert_close(half, one, rtol=0, atol=0)


@pytest.mark.parametrize("init", [0.5, 2.0])
def test_trainable_dyt_gain_starts_at_qk_norm_init(init):
    for norm in _qk_norms(_dyt_model(frozen=False, init=init)):
        assert norm.weight.requires_grad
        torch.testing.assert_close(norm.weight.detach(), torch.full_like(norm.weight, init))
