"""Audit pass 38, helper rv46 (second review of the pass's federated input checks)."""

from collections import deque

import torch

from hf_ext.federated import dp_fedavg_mean, fedavg


def _states():
    return [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}]


def test_fedavg_and_dp_fedavg_mean_take_a_deque_of_states():
    """`check_compatible_states` accepts any `Sequence` of state dicts (a deque is one) but compared them through
    `states[1:]`, which a deque does not support: "TypeError: sequence index must be integer, not 'slice'"."""
    states = _states()
    torch.testing.assert_close(fedavg(deque(states), [1, 3]), fedavg(states, [1, 3]), rtol=0, atol=0)
    torch.testing.assert_close(dp_fedavg_mean(deque(states), 2), dp_fedavg_mean(states, 2), rtol=0, atol=0)
    torch.testing.assert_close(fedavg(deque(states), [1, 3])["w"], torch.tensor([2.5, 5.0]), rtol=0, atol=0)
