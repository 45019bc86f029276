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
