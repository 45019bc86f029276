"""fg49: the emulated FP8 GEMMs under `torch.autocast` (e.g. `Trainer(bf16=True)` with FP32 master weights).

Autocast rounded the dequantised FP8 operands (FP8 values times a non-power-of-two scale) to bfloat16 before the
product, so the "numerics reference" carried an extra operand rounding an FP8 GEMM does not have (output 2.9e-3
relative from the FP32-product result, 256x128 linear, against 1.7e-3 for rounding the exact output to bfloat16), and
returned FP32 where `nn.Linear`, torchao and Transformer Engine return the autocast dtype. The GEMMs now run with
autocast off, and the output has the autocast dtype."""

import pytest
import torch

from hf_ext.fp8.emulation import Fp8Linear, fp8_bmm


@pytest.mark.parametrize("scaling", ["current", "delayed"])
def test_fp8_linear_under_autocast_is_the_fp32_product_in_the_autocast_dtype(scaling):
    torch.manual_seed(0)
    module = Fp8Linear(256, 128, scaling=scaling).eval()  # eval: delayed scaling records nothing between the calls
    x = torch.randn(64, 256)
    exact = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, exact.to(torch.bfloat16))


def test_fp8_linear_backward_inside_autocast_keeps_fp32_gemms():
    torch.manual_seed(1)
    module = Fp8Linear(64, 32, scaling="current")
    x = torch.randn(16, 64, requires_grad=True)
    grad = torch.randn(16, 32).to(torch.bfloat16)  # the gradient of a bf16 output
    module(x).backward(grad.float())
    ref_x, ref_w = x.grad.clone(), module.weight.grad.clone()
    x.grad, module.weight.grad = None, None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
        out.backward(grad.to(out.dtype))
    assert torch.equal(x.grad, ref_x) and torch.equal(module.weight.grad, ref_w)


def test_fp8_bmm_under_autocast_equals_the_fp32_product():
    torch.manual_seed(2)
    a, b = torch.randn(2, 3, 8, 32), torch.randn(2, 3, 32, 8)
    exact = fp8_bmm(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fp8_bmm(a, b)
    assert out.dtype == exact.dtype
    assert torch.equal(out, exact)


def test_fp8_linear_runs_on_the_meta_device():
    """A device type without autocast (shape-only forwards on "meta") is not given an autocast context."""
    module = Fp8Linear(32, 16, scaling="current", device="meta")
    out = module(torch.empty(4, 32, device="meta"))
    assert out.shape == (4, 16) and out.device.type == "meta"
