"""bm16: with torch 2.13 / torchao 0.18, torch's CPU `_scaled_mm` is a reference kernel (about 40 s for one
2048x128x384 FP8 training step against 0.06 s for torchao's emulated GEMM), so `make demo` and every CPU pretrain
with the default torchao backend took hours. `convert(..., "torchao")` now defaults to torchao's emulation when no CUDA
device is available (`emulate=None`), and keeps `torch._scaled_mm` where CUDA is (a model converted on CPU and moved
to a GPU must not run emulated); an explicit `emulate` is honoured."""

import pytest
import torch
from torch import nn

from hf_ext.fp8 import convert


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))


def _emulate_flags(model):
    return [m.config.emulate for m in model.modules() if type(m).__name__ == "Float8Linear"]


def test_default_is_torchao_emulation_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _emulate_flags(convert(_model(), "torchao")) == [True, True]


def test_default_keeps_scaled_mm_where_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # converting only: no CUDA kernel runs here
    assert _emulate_flags(convert(_model(), "torchao")) == [False, False]


@pytest.mark.parametrize("emulate", [True, False])
def test_an_explicit_emulate_is_honoured(monkeypatch, emulate):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: not emulate)
    assert _emulate_flags(convert(_model(), "torchao", emulate=emulate)) == [emulate, emulate]


@pytest.mark.parametrize("bad", ["yes", 1, 0.0])
def test_emulate_must_be_a_bool_or_none(bad):
    with pytest.raises(ValueError, match="emulate must be True or False"):
        convert(_model(), "torchao", emulate=bad)


def test_emulation_matches_scaled_mm_on_cpu():
    """The same FP8 quantisation: the two GEMMs agree to accumulation-order rounding (tensorwise, small shapes)."""
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    out = {}
    for emulate in (True, False):
        model = convert(_model(), "torchao", emulate=emulate)
        y = model(x)
        y.square().sum().backward()
        out[emulate] = (y.detach(), model[0].weight.grad.clone())
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cuda", [False, True])
def test_accelerate_recipe_kwargs_follow_the_same_default(monkeypatch, cuda):
    from hf_ext.fp8 import ao_recipe_kwargs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    model = _model()
    assert ao_recipe_kwargs(model).config.emulate is (not cuda)
    assert ao_recipe_kwargs(model, emulate=cuda).config.emulate is cuda
    with pytest.raises(ValueError, match="emulate must be True or False"):
        ao_recipe_kwargs(model, emulate="no")
