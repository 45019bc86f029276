"""Audit pass 27 (fg27) fixes for hf_ext.fp8."""

import pytest
import torch

from hf_ext.fp8 import KurtosisMonitor, kurtosis
from hf_ext.models.fog import FogConfig, FogForCausalLM


@pytest.mark.parametrize("act", ["smooth_swiglu", "smooth_swiglu_product"])
def test_mlp_out_of_a_smooth_swiglu_mlp_is_measured_after_the_rescale(act):
    """The reference tracker measures `mlp_out` after Smooth-SwiGLU multiplies the down projection's output back by
    the per-token scale (Megatron mlp.py). The monitor hooked the down projection, whose output is the rescaled one:
    a token with 100x larger gate pre-activations read as kurtosis 3.3 instead of 44."""
    torch.manual_seed(0)
    cfg = FogConfig.llama_baseline(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act=act,
    )
    model = FogForCausalLM(cfg).eval()
    mlp = model.model.layers[1].mlp
    token5 = torch.arange(16)[None, :, None] == 5
    mlp.gate_proj.register_forward_hook(lambda m, a, out: out * torch.where(token5, 100.0, 1.0))
    seen = []
    mlp.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    monitor = KurtosisMonitor(model, sites=["mlp_out"])
    with torch.no_grad(), monitor.active():
        model(torch.randint(0, 256, (2, 16)))
    stats = monitor.collect()
    assert stats["mlp_out/kurtosis/layer_1"] == pytest.approx(kurtosis(seen[0]).mean().item(), rel=1e-5)
    assert stats["mlp_out/max_abs/layer_1"] == pytest.approx(seen[0].abs().max().item(), rel=1e-6)


def test_mlp_out_of_other_mlps_is_still_the_down_projection_output():
    torch.manual_seed(0)
    model = FogForCausalLM(
        FogConfig.fog(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
    )
    monitor = KurtosisMonitor(model, sites=["mlp_out"])
    assert monitor.site_modules["mlp_out"] == [[("mlp.down_proj", "output")]] * 2
