"""Audit pass 38, helper rv46 (second review of the pass's federated input checks)."""

from collections import deque

import numpy as np
import pytest
import torch

from hf_ext.federated import dp_fedavg_mean, fedavg, lora_delta, merge_then_average


def _states():
    return [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}]


def test_fedavg_and_dp_fedavg_mean_take_a_deque_of_states():
    """`check_compatible_states` accepts any `Sequence` of state dicts (a deque is one) but compared them through
    `states[1:]`, which a deque does not support: "TypeError: sequence index must be integer, not 'slice'"."""
    states = _states()
    torch.testing.assert_close(fedavg(deque(states), [1, 3]), fedavg(states, [1, 3]), rtol=0, atol=0)
    torch.testing.assert_close(dp_fedavg_mean(deque(states), 2), dp_fedavg_mean(states, 2), rtol=0, atol=0)
    torch.testing.assert_close(fedavg(deque(states), [1, 3])["w"], torch.tensor([2.5, 5.0]), rtol=0, atol=0)


@pytest.mark.parametrize("scaling", [np.float32(2.0), np.int64(2), torch.tensor(2.0)])
def test_lora_delta_and_merge_then_average_take_numpy_and_0d_tensor_scalings(scaling):
    """a450714 made `lora_delta` check its `scaling` with `_check_lora_scaling`, which took only Python int / float:
    np.float32(2.0), np.int64(2) and a 0-d tensor, which `lora_delta` multiplied correctly before, were refused with
    "must be a finite real number > 0 ... got np.float32(2.0)" (untrue); `merge_then_average` refused them already.
    They are the numbers they hold, as elsewhere in hf_ext."""
    state = {"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.ones(4, 2)}
    expected = torch.full((4, 3), 4.0, dtype=torch.float64)  # 2 * (B @ A), every entry 2 * 2
    torch.testing.assert_close(lora_delta(state, scaling)["m"].double(), expected, rtol=0, atol=0)
    torch.testing.assert_close(merge_then_average([state], [1.0], scaling)["m"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("scaling", [True, "2", float("nan"), float("inf"), 0, -1.0, torch.tensor([2.0])])
def test_lora_delta_still_refuses_scalings_that_are_not_positive_finite_numbers(scaling):
    state = {"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.ones(4, 2)}
    with pytest.raises(ValueError, match="must be a finite real number > 0"):
        lora_delta(state, scaling)
