"""Audit lf41: an emulated Fp8Linear fed a 0-token batch returns an empty output and leaves its scaling state alone."""

import pytest
import torch

from hf_ext.fp8.emulation import Fp8Linear, fp8_bmm


def _trained(scaling):
    torch.manual_seed(0)
    m = Fp8Linear(16, 32, scaling=scaling, amax_history_len=4)
    m.train()
    m(torch.randn(3, 16)).sum().backward()
    m.zero_grad()
    return m


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16), (0, 0, 16)])
@pytest.mark.parametrize("scaling", ["delayed", "current"])
def test_empty_batch_is_a_no_op_for_the_scaling_state(scaling, shape):
    # failed with "amax(): Expected reduction dim to be specified for input.numel() == 0"
    m = _trained(scaling)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(*shape, requires_grad=True)
    y = m(x)
    assert y.shape == (*shape[:-1], 32)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(m.weight.grad, torch.zeros_like(m.weight))
    assert torch.equal(m.bias.grad, torch.zeros_like(m.bias))
    after = m.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # the next real step scales as if the empty batch had not happened
    ref = _trained(scaling)
    x = torch.randn(5, 16)
    assert torch.equal(m(x), ref(x))
    if scaling == "delayed":
        assert torch.equal(m.fp8_amax_history, ref.fp8_amax_history)


def test_empty_batch_still_joins_the_amax_reduction(monkeypatch):
    # under data parallelism the other ranks' recording collective needs this rank's amaxes (else a hang), and all
    # ranks record the same group amaxes: a rank with an empty batch takes part with amax 0
    import torch.distributed as dist

    calls = []

    def fake_all_reduce(buf, op=None, group=None):
        calls.append(buf.clone())
        buf[0] = 7.0  # the other rank's input amax

    m = _trained("delayed")
    monkeypatch.setattr("hf_ext.fp8.emulation.default_amax_group", lambda: "group")
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    m(torch.randn(0, 16)).sum().backward()
    assert len(calls) == 2  # the forward's (input, weight) and the backward's (output gradient)
    assert calls[0][0] == 0.0  # this rank's input amax: none
    assert m.fp8_amax_history[0, 0] == 7.0  # the group's, as on the other rank


def test_empty_fp8_bmm():
    a = torch.randn(2, 0, 8, requires_grad=True)
    out = fp8_bmm(a, torch.randn(2, 8, 5))
    assert out.shape == (2, 0, 5)
    out.sum().backward()
    assert a.grad.shape == a.shape
