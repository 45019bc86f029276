"""Audit cu38: a CubicNewton state dict loaded into an optimizer over other parameters (or the same in another order)
is refused at load time instead of running with its flat estimates on the wrong coordinates."""

from __future__ import annotations

import pytest
import torch

from hf_ext.optim import CubicNewton


def _loss(x):
    return (x**2).sum() + (x**4).sum()


def _trained_state(hessian):
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.randn(4))
    opt = CubicNewton([a, b], hessian=hessian)
    for _ in range(2):
        opt.step(lambda: _loss)
    return (a, b), opt.state_dict()


@pytest.mark.parametrize("hessian", ["dense", "fresh"])
def test_a_state_over_other_parameters_is_refused_at_load(hessian):
    (a, b), sd = _trained_state(hessian)
    # the same tensors in another order: torch's check (number of tensors) passes, the estimates would be permuted
    swapped = CubicNewton(
        [torch.nn.Parameter(b.detach().clone()), torch.nn.Parameter(a.detach().clone())], hessian=hessian
    )
    with pytest.raises(ValueError, match="does not belong to this optimizer's parameters.*same order"):
        swapped.load_state_dict(sd)
    assert swapped.state_dict()["state"] == {}  # nothing loaded
    # other sizes, also in a state without the layout record (an older hf_ext): refused at load by the sizes
    other = CubicNewton([torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(4))], hessian=hessian)
    old = {k: v for k, v in sd.items() if k != "flat_layout"}
    with pytest.raises(ValueError, match="has shape \\(10"):
        other.load_state_dict(old)
    # the right parameters load and continue as before
    same = CubicNewton(
        [torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())], hessian=hessian
    )
    same.load_state_dict(sd)
    same.step(lambda: _loss)
