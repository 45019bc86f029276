"""A backward pass of an eval-mode forward (influence functions, gradient attribution) leaves delayed scaling alone.

The amax histories are training state (checkpointed so that a resume is exact); evaluation records nothing. A
gradient taken in eval mode quantises the output gradient with the scale the history gives, like the eval forward
does for its operands, and records nothing: two identical eval-mode backwards give identical gradients, whatever ran
between them, and a training run continued afterwards is the run that never saw them.
"""

import torch

from hf_ext.fp8 import Fp8Linear, convert
from hf_ext.models.fog import FogConfig, FogForCausalLM

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def _qdq(t: torch.Tensor, amax: float, dtype: torch.dtype) -> torch.Tensor:
    """Quantise-dequantise with scale fp8_max / amax, through torch's own float8 cast, in float64."""
    scale = torch.finfo(dtype).max / amax
    return (t.double() * scale).clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype).double() / scale


def _trained_layer() -> Fp8Linear:
    torch.manual_seed(0)
    layer = Fp8Linear(16, 8, bias=False, scaling="delayed", amax_history_len=4)
    for i in range(3):
        layer(torch.randn(5, 16) * (i + 1)).sum().backward()
    layer.zero_grad()
    return layer


def test_an_eval_mode_backward_records_nothing_and_uses_the_historys_gradient_scale():
    layer = _trained_layer().eval()
    history, last = layer.fp8_amax_history.clone(), layer.fp8_scale_amax.clone()
    torch.manual_seed(1)
    x = torch.randn(5, 16)
    g = torch.randn(5, 8) * 50  # far above the gradient amaxes of the history: clipped by the history's scale
    layer(x).backward(g)
    assert torch.equal(layer.fp8_amax_history, history)
    assert torch.equal(layer.fp8_scale_amax, last)
    ref_x, ref_w, ref_g = (history[:, k].max().item() for k in range(3))
    expected = _qdq(g, ref_g, E5M2).t() @ _qdq(x, ref_x, E4M3)
    assert torch.allclose(layer.weight.grad.double(), expected, rtol=1e-6, atol=1e-6)
    out = layer(x).double()  # the eval forward: both operands scaled from the history, nothing recorded either
    assert torch.allclose(out, _qdq(x, ref_x, E4M3) @ _qdq(layer.weight.detach(), ref_w, E4M3).t(), rtol=1e-6, atol=1e-6)
    assert torch.equal(layer.fp8_amax_history, history)


def test_repeated_eval_mode_gradients_are_equal_and_training_continues_as_without_them():
    torch.manual_seed(0)
    config = FogConfig.fog(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    model = convert(FogForCausalLM(config), "emulated", scaling="delayed", amax_history_len=8)
    twin = convert(FogForCausalLM(config), "emulated", scaling="delayed", amax_history_len=8)
    twin.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 64, (2, 12), generator=gen) for _ in range(4)]

    def train_step(m, ids):
        m.train()
        m(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            for p in m.parameters():
                if p.grad is not None:
                    p -= 1e-2 * p.grad
        m.zero_grad()

    for m in (model, twin):
        train_step(m, batches[0])

    def eval_gradient(ids):
        model.eval()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        return grads

    first = eval_gradient(batches[1][:1])
    eval_gradient(batches[2] * 0 + 63)  # another example's gradient in between
    again = eval_gradient(batches[1][:1])
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))

    train_step(model, batches[3])
    train_step(twin, batches[3])
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
