"""Mutation run 17: what Fp8HealthCallback logs, its absolute threshold's boundary, and which ModuleList is the block list.

- `log_per_layer=False` (default) adds only the per-site layer averages `fp8/<site>/kurtosis` to the logs;
  `log_per_layer=True` also each layer's value `fp8/<site>/kurtosis/layer_<i>`.
- `absolute_threshold`: "alert when kurtosis > this" (docstring and docs/fp8.md: "exceeds"), so a kurtosis exactly
  at the threshold does not alert and one above it does.
- `find_decoder_layers`: the longest `nn.ModuleList`, the first found (outermost) on a tie: blocks that each hold a
  list as long as the block list (4 blocks of 4 experts) are the blocks, not the last block's experts.
"""

import pytest
import torch
from torch import nn
from transformers import TrainerControl, TrainerState

from hf_ext.fp8 import Fp8HealthCallback, KurtosisMonitor, find_decoder_layers


def _one_monitored_step(callback: Fp8HealthCallback, x: torch.Tensor, num_layers: int = 2) -> TrainerState:
    """Step 1 of a run with `every_n_steps=1`: `num_layers` identity blocks whose outputs (the `activation` site) are
    `x`, so each layer's kurtosis is that of `x`."""
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Identity() for _ in range(num_layers)])
    callback.monitor = KurtosisMonitor(model, sites=["activation"])
    state = TrainerState()
    state.global_step = 0
    control = TrainerControl()
    callback.on_step_begin(None, state, control)
    with torch.no_grad():
        for layer in model.layers:
            layer(x)
    state.global_step = 1
    callback.on_step_end(None, state, control)
    callback.on_log(None, state, control, logs={})
    return state


def _spike(width: int) -> torch.Tensor:
    """Two samples of `width` values with one non-zero each: kurtosis exactly `width`."""
    x = torch.zeros(2, width)
    x[:, 3] = 1.0
    return x


@pytest.mark.parametrize("per_layer", [False, True])
def test_log_per_layer_decides_which_kurtosis_values_are_logged(per_layer):
    callback = Fp8HealthCallback(every_n_steps=1, log_per_layer=per_layer)
    state = _one_monitored_step(callback, _spike(8), num_layers=2)
    logged = {k for k in state.log_history[-1] if k.startswith("fp8/")}
    expected = {"fp8/activation/kurtosis"}
    if per_layer:
        expected |= {"fp8/activation/kurtosis/layer_0", "fp8/activation/kurtosis/layer_1"}
    assert logged == expected
    assert state.log_history[-1]["fp8/activation/kurtosis"] == pytest.approx(8.0)


def test_log_per_layer_defaults_to_the_averages_only():
    state = _one_monitored_step(Fp8HealthCallback(every_n_steps=1), _spike(8), num_layers=3)
    assert {k for k in state.log_history[-1] if k.startswith("fp8/")} == {"fp8/activation/kurtosis"}


def test_a_kurtosis_exactly_at_the_absolute_threshold_does_not_alert():
    doc = Fp8HealthCallback.__doc__
    assert "absolute_threshold (`float`, defaults to 100.0): Alert when kurtosis > this." in doc
    at = Fp8HealthCallback(every_n_steps=1, absolute_threshold=100.0)
    _one_monitored_step(at, _spike(100), num_layers=1)
    assert at.history[-1]["activation/kurtosis/layer_0"] == 100.0  # exactly at the threshold
    assert at.alerts == []
    above = Fp8HealthCallback(every_n_steps=1, absolute_threshold=100.0)
    _one_monitored_step(above, _spike(101), num_layers=1)
    assert [a["reason"] for a in above.alerts] == ["> absolute threshold 100"]


class _ExpertBlock(nn.Module):
    def __init__(self, num_experts):
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(num_experts))


class _MoEModel(nn.Module):
    def __init__(self, num_blocks, num_experts):
        super().__init__()
        self.layers = nn.ModuleList(_ExpertBlock(num_experts) for _ in range(num_blocks))


def test_a_block_list_as_long_as_an_inner_list_is_the_one_found():
    model = _MoEModel(4, 4)
    found = find_decoder_layers(model)
    assert len(found) == 4 and all(a is b for a, b in zip(found, model.layers))
    assert all(a is b for a, b in zip(KurtosisMonitor(model, sites=["activation"]).layers, model.layers))
    # a longer inner list wins (the first one found; the rule is "longest"): only the tie is decided above
    longer = _MoEModel(4, 5)
    assert all(a is b for a, b in zip(find_decoder_layers(longer), longer.layers[0].experts))


class _DeclaredMoEModel(_MoEModel):
    _no_split_modules = ["_ExpertBlock"]  # as a transformers model declares its block class


def test_a_declared_block_class_wins_over_a_longer_expert_list():
    # 2 blocks of 8 experts: the longest list is an expert list, but the model names its block class
    model = _DeclaredMoEModel(2, 8)
    found = find_decoder_layers(model)
    assert len(found) == 2 and all(a is b for a, b in zip(found, model.layers))
    assert all(a is b for a, b in zip(KurtosisMonitor(model, sites=["activation"]).layers, model.layers))
    # the declaration is read from any module of the model (e.g. a transformers model inside a wrapper)
    wrapper = nn.Sequential(model)
    assert all(a is b for a, b in zip(find_decoder_layers(wrapper), model.layers))
