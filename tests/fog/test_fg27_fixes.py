"""Audit pass 27 (fg27) fixes for FOG."""

import pytest
import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)


@pytest.mark.parametrize("std", [0.02, 0.01, 0.005])
def test_fog_recipe_input_multiplier_follows_the_init_std(std):
    """The reference's `--input-upscale` multiplies the embeddings by 1/init_std (submit.sh: `MULT = 1/INIT_STD`), so
    the residual stream starts at unit scale whatever the std. `FogConfig.fog(initializer_range=0.01)` kept x50 and
    started it at RMS 0.5."""
    cfg = FogConfig.fog(**TINY, initializer_range=std)
    assert cfg.input_upscale == pytest.approx(1 / std)
    torch.manual_seed(0)
    model = FogForCausalLM(cfg).eval()
    with torch.no_grad():
        h0 = model(torch.randint(0, 512, (4, 32)), output_hidden_states=True).hidden_states[0]
    assert h0.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=0.05)


def test_fog_recipe_input_multiplier_defaults_and_explicit_values():
    assert FogConfig.fog(**TINY).input_upscale == 50.0  # exactly, at the default std 0.02
    assert FogConfig.fog(**TINY, initializer_range=0.01, input_upscale=7.0).input_upscale == 7.0
    assert FogConfig.fog(**TINY, initializer_range=0.01, input_upscale=None).input_upscale is None
    assert FogConfig.fog(**TINY, initializer_range=0.0).input_upscale == 50.0  # no 1/0: the recipe's x50 stays
    with pytest.raises(ValueError, match="initializer_range"):
        FogConfig.fog(**TINY, initializer_range=-0.02)
