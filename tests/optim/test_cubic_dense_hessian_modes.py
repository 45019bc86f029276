"""CubicNewton(hessian="dense") takes the Hessian as `hvp_mode` says: forward over reverse as `jacfwd(grad)` (torch's
`torch.func.hessian` failed on every SiLU model: no forward-mode derivative of the vmapped `silu_backward`), reverse
over reverse for "double_backward", and "auto" falling back where forward-mode AD fails."""

import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.optim import CubicNewton, make_flat_loss
from hf_ext.optim.cubic_newton import dense_hessian


def _llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=4,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).double()


def _batch():
    ids = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def _quadratic_plus_silu(x):
    A = torch.arange(1.0, 10.0, dtype=x.dtype).reshape(3, 3)
    return 0.5 * x @ (A @ A.T) @ x + torch.nn.functional.silu(x).sum()


def _closed_form_hessian(x):
    A = torch.arange(1.0, 10.0, dtype=x.dtype).reshape(3, 3)
    s = torch.sigmoid(x)
    silu_second = s * (1 - s) * (2 + x * (1 - 2 * s))  # d2/dx2 of x * sigmoid(x)
    return A @ A.T + torch.diag(silu_second)


@pytest.mark.parametrize("mode", ["auto", "forward_over_reverse", "double_backward"])
def test_dense_hessian_matches_the_closed_form(mode):
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    H, fell_back = dense_hessian(_quadratic_plus_silu, x, mode)
    torch.testing.assert_close(H, _closed_form_hessian(x), rtol=1e-12, atol=1e-12)
    assert not fell_back


@pytest.mark.parametrize("mode", ["auto", "forward_over_reverse", "double_backward"])
def test_dense_cubic_newton_trains_a_silu_model_in_every_hvp_mode(mode):
    model = _llama()
    params = [p for p in model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().flatten() for p in params]).clone()
    opt = CubicNewton(params, M=10.0, hvp_mode=mode, hessian="dense")
    f, flat = make_flat_loss(model, _batch())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # forward-over-reverse works here: "auto" needs no fallback
        opt.step(lambda: f)
    after = torch.cat([p.detach().flatten() for p in params])
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    # the stored estimate is the Hessian at the starting point, by reverse over reverse in every mode
    model2 = _llama()
    f2, flat2 = make_flat_loss(model2, _batch())
    reference, _ = dense_hessian(f2, flat2.flatten(), "double_backward")
    H = next(st["hessian_estimate"] for st in opt.state.values() if "hessian_estimate" in st)
    # the model's eager attention takes its softmax in float32: equal to float32 rounding
    torch.testing.assert_close(H, reference, rtol=0, atol=1e-5)


def test_auto_falls_back_to_reverse_over_reverse_where_forward_ad_fails():
    class NoForwardAD(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x**3

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x**2 * g

    f = lambda x: NoForwardAD.apply(x).sum()  # noqa: E731
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    with pytest.warns(UserWarning, match="forward-mode AD failed"):
        H, fell_back = dense_hessian(f, x, "auto")
    assert fell_back
    torch.testing.assert_close(H, torch.diag(6 * x))
    with pytest.raises(ValueError, match="`mode` must be one of"):
        dense_hessian(f, x, "reverse")
