"""Issue 15 item 2: FOG's MLP activations match the reference code (exact GELU; Smooth-SwiGLU scaling the linear
branch by 1/max|gate| per token and the down-projection output back), checked against closed forms in float64."""

import math

import pytest
import torch

from hf_ext.models.fog import FogConfig
from hf_ext.models.fog.modeling_fog import FogMLP

TINY = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def _mlp(act):
    torch.manual_seed(0)
    mlp = FogMLP(FogConfig(**TINY, hidden_act=act)).double()
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return mlp


def _down_input(mlp, x):
    seen = {}
    handle = mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("h", a[0]))
    out = mlp(x)
    handle.remove()
    return out, seen["h"]


def test_gelu_is_exact_erf_form():
    mlp = _mlp("gelu")
    x = torch.randn(3, 5, 32, dtype=torch.float64) * 2
    u = x @ mlp.up_proj.weight.T
    exact = 0.5 * u * (1 + torch.erf(u / math.sqrt(2.0)))
    out, h = _down_input(mlp, x)
    torch.testing.assert_close(h, exact, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, exact @ mlp.down_proj.weight.T, rtol=0, atol=1e-12)


def test_gelu_tanh_option_is_the_tanh_approximation():
    mlp = _mlp("gelu_tanh")
    x = torch.randn(3, 5, 32, dtype=torch.float64) * 2
    u = x @ mlp.up_proj.weight.T
    approx = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
    _, h = _down_input(mlp, x)
    torch.testing.assert_close(h, approx, rtol=0, atol=1e-12)
    assert (approx - 0.5 * u * (1 + torch.erf(u / math.sqrt(2.0)))).abs().max() > 1e-5  # the two forms differ


def test_smooth_swiglu_scales_linear_branch_by_gate_max():
    mlp = _mlp("smooth_swiglu")
    x = torch.randn(3, 5, 32, dtype=torch.float64) * 2
    g, u = x @ mlp.gate_proj.weight.T, x @ mlp.up_proj.weight.T
    s = g.abs().amax(-1, keepdim=True)
    out, h = _down_input(mlp, x)
    torch.testing.assert_close(h, torch.nn.functional.silu(g) * (u / s), rtol=0, atol=1e-12)
    # scaling back the output makes it SwiGLU's value exactly (linear in the scale)
    swiglu = (torch.nn.functional.silu(g) * u) @ mlp.down_proj.weight.T
    torch.testing.assert_close(out, swiglu, rtol=1e-12, atol=1e-12)


def test_smooth_swiglu_scale_is_not_differentiated():
    """The per-token scale is detached (as in the reference): the gradient equals plain SwiGLU's."""
    smooth, plain = _mlp("smooth_swiglu"), _mlp("swiglu")
    plain.load_state_dict(smooth.state_dict())
    x = torch.randn(2, 4, 32, dtype=torch.float64)
    smooth(x).square().sum().backward()
    plain(x).square().sum().backward()
    for (n, a), b in zip(smooth.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=n)


def test_smooth_swiglu_product_option():
    mlp = _mlp("smooth_swiglu_product")
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    g, u = x @ mlp.gate_proj.weight.T, x @ mlp.up_proj.weight.T
    prod = torch.nn.functional.silu(g) * u
    out, h = _down_input(mlp, x)
    torch.testing.assert_close(h, prod / prod.abs().amax(-1, keepdim=True), rtol=0, atol=1e-12)
    torch.testing.assert_close(out, prod @ mlp.down_proj.weight.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "smoothswiglu"])
def test_unknown_activation_names_the_choices(act):
    with pytest.raises(ValueError, match="gelu_tanh"):
        FogConfig(**TINY, hidden_act=act)
