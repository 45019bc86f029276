"""Mutation pass mu52: tests that kill surviving mutants of hf_ext.fp8 (monitor saturation)."""

import pytest
import torch

from hf_ext.fp8 import KurtosisMonitor


class _Preset(torch.nn.Module):
    """Returns a tensor the test sets: the monitored site's values are chosen exactly."""

    def __init__(self):
        super().__init__()
        self.value = None

    def forward(self, x):
        return self.value


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Module()
        self.mlp.up_proj = _Preset()

    def forward(self, x):
        self.mlp.up_proj(x)
        return x


def test_saturation_is_a_fraction_of_all_elements_zeros_included():
    # the module docstring: `saturation` is the fraction of *elements* above the previous step's amax (what delayed
    # scaling would clip); `underflow` alone is a fraction of the non-zero elements. A ReLU-like site with half its
    # entries at zero: one element of 8 above the previous amax is 1/8, not 1/4 (a fraction of the 4 non-zero ones)
    blocks = torch.nn.ModuleList([_Block()])
    monitor = KurtosisMonitor(blocks, sites=["mlp_intermediate"], layers=list(blocks))
    up = blocks[0].mlp.up_proj
    up.value = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.5, 0.0, 1.5]])
    with torch.no_grad(), monitor.active():
        blocks[0](torch.zeros(1))
    assert monitor.collect()["mlp_intermediate/max_abs/layer_0"] == 2.0
    up.value = torch.tensor([[0.0, 3.0, 0.0, 2.0], [0.0, 0.5, 0.0, 1.5]])
    with torch.no_grad(), monitor.active():
        blocks[0](torch.zeros(1))
    stats = monitor.collect()
    assert stats["mlp_intermediate/saturation/layer_0"] == pytest.approx(1 / 8)
    assert stats["mlp_intermediate/underflow/layer_0"] == 0.0
