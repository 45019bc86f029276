"""Rotational updates of weights that are not row-major (conv weights in `torch.channels_last`, the usual CNN setting;
a column-major 2D weight) equal those of the same weights stored contiguously. LionAR and RotationalWrapper used to
raise `RuntimeError: view size is not compatible ...` at the first step (after earlier tensors had been updated)."""

import pytest
import torch
from torch import nn

from hf_ext.optim import LionAR, RotationalWrapper

CL = torch.channels_last

_BUILDS = {
    "lion_ar": lambda ps: LionAR(ps, lr=1e-2, weight_decay=0.1, nesterov=True, inverse_bias_correction=True),
    "lion_ar per tensor, update-norm EMA": lambda ps: LionAR(
        ps, lr=1e-2, weight_decay=0.1, per_neuron=False, update_norm_decay=0.9
    ),
    "rotational_adamw fused": lambda ps: RotationalWrapper(ps, inner="adamw", lr=1e-2, weight_decay=0.1),
    "rotational_adamw unfused": lambda ps: RotationalWrapper(ps, inner="adamw", lr=1e-2, weight_decay=0.1, fused=False),
    "rotational_lion": lambda ps: RotationalWrapper(ps, inner="lion", lr=1e-2, weight_decay=0.1),
    "rotational_sgdm": lambda ps: RotationalWrapper(ps, inner="sgdm", lr=1e-2, weight_decay=0.1, nesterov=True),
}

# (shape, how the second run stores the weight, how it stores the gradient)
_LAYOUTS = {
    "channels_last": ((16, 8, 3, 3), lambda t: t.contiguous(memory_format=CL), lambda t: t.contiguous(memory_format=CL)),
    "channels_last, row-major grad": ((16, 8, 3, 3), lambda t: t.contiguous(memory_format=CL), lambda t: t),
    "channels_last_3d": (
        (6, 4, 2, 3, 3),
        lambda t: t.contiguous(memory_format=torch.channels_last_3d),
        lambda t: t.contiguous(memory_format=torch.channels_last_3d),
    ),
    "column-major 2D": ((12, 20), lambda t: t.t().contiguous().t(), lambda t: t.t().contiguous().t()),
}


def _run(build, shape, store, store_grad, steps=4):
    g = torch.Generator().manual_seed(0)
    w0, b0 = torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)
    w, b = nn.Parameter(store(w0.clone())), nn.Parameter(b0.clone())
    opt = build([w, b])
    for _ in range(steps):
        gw, gb = torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)
        w.grad, b.grad = store_grad(gw), gb
        opt.step()
    return w0, w, b, opt


@pytest.mark.parametrize("layout", list(_LAYOUTS))
@pytest.mark.parametrize("name", list(_BUILDS))
def test_strided_weights_step_exactly_like_row_major_ones(name, layout):
    shape, store, store_grad = _LAYOUTS[layout]
    ref_name = name
    if name == "rotational_adamw fused" and layout == "channels_last, row-major grad":
        # torch's fused AdamW kernel walks its tensors in memory order, so a weight and a gradient of different
        # strides take the unfused path (which rounds differently from the fused kernel in the last bits)
        ref_name = "rotational_adamw unfused"
    w0, ref_w, ref_b, ref_opt = _run(_BUILDS[ref_name], shape, lambda t: t, lambda t: t)
    _, w, b, opt = _run(_BUILDS[name], shape, store, store_grad)
    assert (ref_w - w0).abs().max() > 1e-2  # the weights did move
    assert torch.equal(w, ref_w) and torch.equal(b, ref_b)  # the same arithmetic: bit-identical
    assert w.stride() == store(torch.empty(shape)).stride()  # the weight keeps its memory format
    torch.testing.assert_close(opt.state[w]["norm"], ref_opt.state[ref_w]["norm"], rtol=0, atol=0)


@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
def test_channels_last_conv_model_trains_with_rotational_updates(cls):
    """A small CNN in channels_last (the paper's appendix trains ResNet-20): the steps run, the conv filters rotate at
    fixed norms, and the result matches the contiguous model up to the conv kernels' own rounding differences."""

    def run(memory_format):
        torch.manual_seed(0)
        # float64: the two memory formats run different conv kernels, whose float32 rounding differs by CPU (one
        # machine's kernels gave 4e-5 apart after 3 steps); in float64 that rounding is far below the tolerance
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        model = model.to(dtype=torch.float64, memory_format=memory_format)
        opt = cls(model, lr=1e-2, weight_decay=0.1)
        x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64).contiguous(
            memory_format=memory_format
        )
        norms = None
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            norms = norms if norms is not None else model[0].weight.detach().flatten(1).norm(dim=1)
        return model, norms

    ref, _ = run(torch.contiguous_format)
    model, norms = run(CL)
    assert model[0].weight.is_contiguous(memory_format=CL)
    torch.testing.assert_close(model[0].weight.detach().flatten(1).norm(dim=1), norms, rtol=1e-6, atol=0)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_snr_correction_of_a_channels_last_weight_matches_up_to_summation_order():
    """The SNR statistics are whole-tensor sums, taken in memory order: a channels_last weight's differ from a
    row-major one's in the last bits only."""
    build = lambda ps: LionAR(ps, lr=1e-2, weight_decay=0.1, snr_correction=True)  # noqa: E731
    shape, store, store_grad = _LAYOUTS["channels_last"]
    _, ref_w, ref_b, _ = _run(build, shape, lambda t: t, lambda t: t)
    _, w, b, _ = _run(build, shape, store, store_grad)
    torch.testing.assert_close(w, ref_w, rtol=1e-6, atol=1e-7)
    assert torch.equal(b, ref_b)
