"""uj18 F1: a model whose attention calls torch's `scaled_dot_product_attention` itself (`GrokDecoderForCausalLM`'s
`nn.MultiheadAttention`) passed CubicNewtonTrainer's construction check and failed at step 1 ("derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented": the fused kernels have no double
backward / forward-mode AD). The loss functions of `make_flat_loss`, `hessian_vector_product` and `CubicNewton.step`
now run SDPA on its math backend (`second_order_attention`): exact Hessian-vector products, every HVP mode trains,
models without SDPA compute exactly what they did, and HF models with fused attention are still refused."""

import math
import types
import warnings

import pytest
import torch
from torch import nn

from hf_ext.neuralgrok import GrokDecoderConfig, GrokDecoderForCausalLM
from hf_ext.optim import (
    CubicNewton,
    CubicNewtonTrainer,
    CubicNewtonTrainingArguments,
    check_second_order_support,
    hessian_vector_product,
    make_flat_loss,
)

MODES = ("auto", "forward_over_reverse", "double_backward")


def _grok(dtype=torch.float32):
    torch.manual_seed(0)
    cfg = GrokDecoderConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    return GrokDecoderForCausalLM(cfg).to(dtype).eval()


def _batch(n=4, length=5):
    ids = torch.randint(0, 16, (n, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def _sdpa_flags():
    b = torch.backends.cuda
    return (b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled(), b.cudnn_sdp_enabled())


def _grad_by_plain_autograd(model, flat, point, batch):
    """The gradient at `point` by one ordinary backward of the model (default SDPA backend, first order only)."""
    saved = flat.flatten()
    flat.assign(point)
    try:
        model.zero_grad()
        model(**batch).loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in flat.params]).clone()
    finally:
        flat.assign(saved)
        model.zero_grad()


@pytest.mark.parametrize("mode", MODES)
def test_hvp_through_multihead_attention_matches_finite_differences(mode):
    model, batch = _grok(torch.float64), _batch()
    f, flat = make_flat_loss(model, batch)
    x = flat.flatten()
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    before = _sdpa_flags()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hv = hessian_vector_product(f, x, v, mode)
    # "auto" needs no double-backward fallback: the math backend has forward-mode AD too
    assert not [w for w in caught if "forward-mode AD failed" in str(w.message)]
    assert _sdpa_flags() == before  # the backend choice is restored
    eps = 1e-5
    fd = (
        _grad_by_plain_autograd(model, flat, x + eps * v, batch)
        - _grad_by_plain_autograd(model, flat, x - eps * v, batch)
    ) / (2 * eps)
    assert float(fd.norm()) > 1e-3
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-8)
    # and the double-backward reference on the math path
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), torch.enable_grad():
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xx), xx, create_graph=True)
        (ref,) = torch.autograd.grad(g, xx, v)
    torch.testing.assert_close(hv, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_cubic_newton_trainer_trains_grok_decoder(tmp_path, mode):
    model = _grok()
    start = [p.detach().clone() for p in model.parameters()]
    ids = torch.randint(0, 16, (12, 5), generator=torch.Generator().manual_seed(3))
    data = [{"input_ids": r, "labels": r} for r in ids]
    args = CubicNewtonTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=3,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        cubic_M=5.0,
        cubic_krylov_dim=4,
        cubic_hvp_mode=mode,
        disable_tqdm=True,
    )
    trainer = CubicNewtonTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert len(trainer.cubic_history) == 3 and all(
        math.isfinite(s.step_norm) and s.step_norm > 0 for s in trainer.cubic_history
    )
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), start))
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _OwnSDPA(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)

    def forward(self, x):
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 2).permute(2, 0, 3, 1, 4)
        return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum(dim=(1, 3))


def test_step_with_own_closure_calling_sdpa():
    """A closure's loss function that is not make_flat_loss's (no math-backend context of its own) works too."""
    torch.manual_seed(0)
    net = _OwnSDPA()
    x, y = torch.randn(3, 5, 4), torch.randn(3, 5)
    params = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]
    opt = CubicNewton(params, M=5.0, hvp_mode="double_backward", momentum="none", krylov_dim=3)

    def f(flat_x):
        weights = dict(zip(names, opt._flat.split(flat_x)))
        return ((torch.func.functional_call(net, weights, (x,)) - y) ** 2).mean()

    f.flat = opt._flat
    opt.step(lambda: f)
    assert math.isfinite(opt.last_stats.loss) and opt.last_stats.step_norm > 0


def test_models_without_sdpa_compute_the_same_hvp():
    """The math-backend context changes nothing for eager attention: the same HVP as without it, bit for bit."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager")
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(4))
    batch = {"input_ids": ids, "labels": ids}
    f, flat = make_flat_loss(model, batch)
    x = flat.flatten()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))

    def plain(flat_x):
        return torch.func.functional_call(model, flat.to_dict(flat_x), args=(), kwargs=batch).loss

    ref = torch.func.jvp(torch.func.grad(plain), (x,), (v,))[1]
    assert torch.equal(hessian_vector_product(f, x, v, "forward_over_reverse"), ref)


@pytest.mark.parametrize("impl", ["flash_attention_2", "flash_attention_3", "flex_attention"])
def test_fused_hf_attention_is_still_refused(impl):
    model = nn.Linear(2, 2)
    model.config = types.SimpleNamespace(_attn_implementation=impl)
    with pytest.raises(ValueError, match=rf"need eager or sdpa attention, but the model uses attn_implementation='{impl}'"):
        check_second_order_support(model)
