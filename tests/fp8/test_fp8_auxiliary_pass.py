"""`fp8_auxiliary_pass`: training-mode passes that are not training steps (GRAPE's reweighting gradients) quantise
with the scales the delayed-scaling history gives and leave the FP8 state alone, like eval-mode passes do."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from hf_ext.fp8 import Fp8Linear, fp8_auxiliary_pass
from hf_ext.fp8 import emulation as emu

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def _qdq(t: torch.Tensor, amax: float, dtype: torch.dtype) -> torch.Tensor:
    """Quantise-dequantise with scale fp8_max / amax through torch's own float8 cast, in float64."""
    scale = torch.finfo(dtype).max / amax
    return (t.double() * scale).clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype).double() / scale


class _Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Fp8Linear(16, 16, bias=False, scaling="delayed", amax_history_len=8)
        self.b = Fp8Linear(16, 8, bias=False, scaling="delayed", amax_history_len=8)

    def forward(self, x, ckpt=None):
        if ckpt is None:
            return self.b(torch.tanh(self.a(x)))
        return checkpoint(lambda t: self.b(torch.tanh(self.a(t))), x, use_reentrant=ckpt)


def _trained(seed=0) -> _Two:
    torch.manual_seed(seed)
    m = _Two()
    for i in range(3):
        m(torch.randn(5, 16) * (i + 1)).pow(2).sum().backward()
    m.zero_grad()
    return m


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items() if "fp8" in k}


def _grads(m, x, g, ckpt=None):
    m.zero_grad()
    x = x.clone().requires_grad_(ckpt is not None)  # the reentrant checkpoint needs an input that requires grad
    m(x, ckpt).backward(g)
    out = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    return out


def test_a_training_mode_pass_inside_records_nothing_and_uses_the_historys_scales():
    layer = _trained().a
    history, last = layer.fp8_amax_history.clone(), layer.fp8_scale_amax.clone()
    log, seen = len(layer._fp8_forward_log), layer._fp8_backward_seen
    torch.manual_seed(1)
    x, g = torch.randn(5, 16) * 9, torch.randn(5, 16) * 50  # both far above the history: clipped by its scales
    assert layer.training
    with fp8_auxiliary_pass():
        layer(x).backward(g)
    assert torch.equal(layer.fp8_amax_history, history)
    assert torch.equal(layer.fp8_scale_amax, last)
    assert (len(layer._fp8_forward_log), layer._fp8_backward_seen) == (log, seen)  # activation-checkpointing log
    ref_x, ref_w, ref_g = (history[:, k].max().item() for k in range(3))
    expected = _qdq(g, ref_g, E5M2).t() @ _qdq(x, ref_x, E4M3)
    assert torch.allclose(layer.weight.grad.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ckpt", [None, True, False])
def test_auxiliary_gradients_equal_eval_mode_ones_with_and_without_activation_checkpointing(ckpt):
    model = _trained()
    state = _state(model)
    torch.manual_seed(2)
    x, g = torch.randn(6, 16) * 3, torch.randn(6, 8)
    model.eval()
    reference = _grads(model, x, g)
    model.train()
    with fp8_auxiliary_pass():
        aux = _grads(model, x, g, ckpt)
    for a, b in zip(aux, reference, strict=True):
        assert torch.equal(a, b)
    for k, v in _state(model).items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("ckpt", [None, False])
def test_training_continues_exactly_as_a_twin_that_never_ran_the_auxiliary_passes(ckpt):
    model, twin = _trained(), _trained()
    torch.manual_seed(3)
    xs = [torch.randn(4, 16) * s for s in (1, 20, 0.1, 2)]

    def step(m, x):
        m.train()
        m(x.clone().requires_grad_(ckpt is not None), ckpt).pow(2).sum().backward()
        with torch.no_grad():
            for p in m.parameters():
                p -= 1e-3 * p.grad
        m.zero_grad()

    # a training forward, then auxiliary passes before its backward (their forwards must not enter the log that
    # the checkpointed recomputation reads), then the backward
    model.train()
    twin.train()
    out, out_twin = (
        model(xs[0].clone().requires_grad_(ckpt is not None), ckpt),
        twin(xs[0].clone().requires_grad_(ckpt is not None), ckpt),
    )
    with fp8_auxiliary_pass():
        for x in xs[1:3]:
            model(x, ckpt).sum().backward()
    model.zero_grad()
    out.pow(2).sum().backward()
    out_twin.pow(2).sum().backward()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    model.zero_grad()
    twin.zero_grad()
    step(model, xs[3])
    step(twin, xs[3])
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_context_nests_and_is_left_on_an_exception():
    with fp8_auxiliary_pass():
        with fp8_auxiliary_pass():
            assert emu._AUXILIARY_DEPTH == 2
        assert emu._AUXILIARY_DEPTH == 1
    with pytest.raises(RuntimeError, match="boom"):
        with fp8_auxiliary_pass():
            raise RuntimeError("boom")
    assert emu._AUXILIARY_DEPTH == 0
    layer = _trained().a
    before = layer.fp8_amax_history.clone()
    layer(torch.randn(2, 16)).sum().backward()  # outside again: a training step records
    assert not torch.equal(layer.fp8_amax_history, before)


@pytest.mark.parametrize("ckpt", [None, True, False])
def test_a_backward_run_after_the_context_is_still_an_auxiliary_one(ckpt):
    """Forward inside the block, `.backward()` after it: under activation checkpointing the recomputation runs in the
    backward, outside the block, and used to be taken for a training forward (other scales; reentrant: its amaxes
    recorded into the history). It is now recognised by its operands."""
    model = _trained()
    state = _state(model)
    torch.manual_seed(2)
    x, g = torch.randn(6, 16) * 3, torch.randn(6, 8)
    model.eval()
    reference = _grads(model, x, g)
    model.train()
    with fp8_auxiliary_pass():
        out = model(x.clone().requires_grad_(ckpt is not None), ckpt)
    out.backward(g)
    for p, r in zip(model.parameters(), reference, strict=True):
        assert torch.equal(p.grad, r)
    for k, v in _state(model).items():
        assert torch.equal(v, state[k]), k
    assert not model.a._fp8_aux_log and not model.b._fp8_aux_log  # consumed


@pytest.mark.parametrize("ckpt", [True, False])
def test_a_training_step_on_the_inputs_of_an_earlier_auxiliary_forward_still_records(ckpt):
    """A training forward whose operands equal an auxiliary forward's that never ran a backward (a logged entry left
    over) is still a training forward: the run equals a twin without the auxiliary forward."""
    model, twin = _trained(), _trained()
    torch.manual_seed(4)
    x = torch.randn(4, 16) * 5
    with fp8_auxiliary_pass():
        model(x.clone().requires_grad_(True), ckpt)  # no backward
    for m in (model, twin):
        m(x.clone().requires_grad_(True), ckpt).pow(2).sum().backward()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
