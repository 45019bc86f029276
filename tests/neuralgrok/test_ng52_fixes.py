"""Pass 42 (ng52): NeuralGrok / Grokfast under mixed precision."""

import pytest
import torch

from hf_ext.neuralgrok import GradFilterOptimizer, GradNormOptimizer, NeuralAmplifier, NeuralGrokOptimizer


def _bf16_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(6)]).to(torch.bfloat16)  # 12 tensors


@pytest.mark.parametrize("kind", ["neuralgrok", "normalize", "grokfast_ema"])
def test_logged_gradient_norms_of_a_bf16_model_are_not_rounded_to_bf16(kind):
    """`grad_norm_raw` / `grad_norm_transformed` were computed in the gradient's dtype: for a bf16 model they came back
    rounded to bf16 (~3 significant digits; the transformed norm of 29 tensors of norm 1, sqrt(29) = 5.385, logged
    5.375). They are now float64 norms of the (bf16) gradients, as the entropies are."""
    model = _bf16_model()
    inner = torch.optim.SGD(model.parameters(), lr=0.0)
    if kind == "neuralgrok":
        opt = NeuralGrokOptimizer(inner, NeuralAmplifier((8,), c=1.0), clip_norm=None)
    elif kind == "normalize":
        opt = GradNormOptimizer(inner, c=1.0, clip_norm=None)
    else:
        opt = GradFilterOptimizer(inner, mode="ema", lamb=2.0)
    model(torch.randn(8, 16, dtype=torch.bfloat16)).float().pow(2).sum().backward()
    raw = [p.grad.detach().clone() for p in model.parameters()]
    opt.step()
    transformed = [p.grad for p in model.parameters()]

    def norm64(grads):
        return float(torch.cat([g.double().flatten() for g in grads]).norm())

    metrics = opt.last_metrics
    assert metrics["grad_norm_raw"] == pytest.approx(norm64(raw), rel=1e-9)
    assert metrics["grad_norm_transformed"] == pytest.approx(norm64(transformed), rel=1e-9)
    if kind != "grokfast_ema":  # every tensor of norm c = 1 (to the bf16 rounding of its entries)
        assert metrics["grad_norm_transformed"] == pytest.approx(12**0.5, rel=1e-3)


def test_normalize_control_gives_a_bf16_gradient_tensor_norm_c_as_the_amplifier_does():
    """`GradNormOptimizer` multiplied a bf16 gradient by its scale `c / ||g||` rounded to bf16 first: every tensor came
    out off norm c by that rounding, up to 0.3% (10 Linear(64, 64) tensors: 0.0032), while the amplifier's transform of
    the same gradients (computed in float32, rounded once per entry) is within 0.1%. The scale is now applied in
    float32 and each entry rounded once."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(10)]).to(torch.bfloat16)
    opt = GradNormOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), c=1.0, clip_norm=None)
    model(torch.randn(8, 64, dtype=torch.bfloat16)).float().pow(2).sum().backward()
    opt.step()
    errors = [abs(float(p.grad.double().norm()) - 1.0) for p in model.parameters()]
    assert max(errors) < 1e-3, max(errors)
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())


def test_normalize_control_of_a_float64_gradient_keeps_float64_precision():
    g = torch.full((1000,), 1e-3, dtype=torch.float64) + torch.linspace(0, 1e-9, 1000, dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(1000, dtype=torch.float64))
    p.grad = g.clone()
    GradNormOptimizer(torch.optim.SGD([p], lr=0.0), c=2.0, clip_norm=None).step()
    assert torch.allclose(p.grad, 2.0 * g / g.norm(), rtol=1e-12, atol=0)


def _ema_filtered_gradient(dtype, steps=300, alpha=0.98, lamb=2.0):
    p = torch.nn.Parameter(torch.zeros(4, dtype=dtype))
    opt = GradFilterOptimizer(torch.optim.SGD([p], lr=0.0), mode="ema", alpha=alpha, lamb=lamb, track_entropy=False)
    for step in range(steps):
        p.grad = torch.full((4,), 1.0 if step == 0 else 1.5, dtype=dtype)
        opt.step()
    return p.grad, opt


def test_grokfast_ema_of_bf16_gradients_follows_the_gradient():
    """The Grokfast EMA was kept in the gradient's dtype: in bf16 `mu <- 0.98 mu + 0.02 g` rounds back to `mu` once
    0.02 |g - mu| is below half a bf16 spacing, so the EMA of a constant 1.5 (started at 1.0) stopped at 1.375 and the
    filtered gradient g + 2 mu read 4.25 instead of 4.5. The EMA is now kept in float32 for bf16 / fp16 gradients."""
    mu = 1.0
    for _ in range(299):
        mu = 0.98 * mu + 0.02 * 1.5
    grad, opt = _ema_filtered_gradient(torch.bfloat16)
    assert grad.dtype == torch.bfloat16
    assert torch.allclose(grad.double(), torch.full((4,), 1.5 + 2.0 * mu, dtype=torch.float64), rtol=4e-3)
    assert opt._ema[0].dtype == torch.float32
    assert float(opt._ema[0][0]) == pytest.approx(mu, rel=1e-5)
    # float32 and float64 gradients keep their own dtype for the EMA
    for dtype in (torch.float32, torch.float64):
        assert _ema_filtered_gradient(dtype, steps=3)[1]._ema[0].dtype == dtype


def test_grokfast_ema_saved_in_bf16_resumes_in_float32():
    """A checkpoint's bf16 EMA (written before it was kept in float32) is read into a float32 EMA."""
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    opt = GradFilterOptimizer(torch.optim.SGD([p], lr=0.0), mode="ema")
    opt.load_extra_state_dict({"num_transforms": 5, "mode": "ema", "ema": {"0": torch.full((4,), 1.25).bfloat16()}})
    assert opt._ema[0].dtype == torch.float32 and float(opt._ema[0][0]) == 1.25
