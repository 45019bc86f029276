"""mu46 mutation kills (federated): behaviours of this pass's aggregation checks that a small mutation could change
without any other test noticing."""

import pytest
import torch

from hf_ext.federated.aggregation import check_compatible_states


def test_a_state_that_is_not_a_mapping_is_named_by_its_own_name():
    good = {"w": torch.zeros(2)}
    with pytest.raises(TypeError, match=r"^client 1 must be a state dict"):
        check_compatible_states([good, good, [1, 2]], names=["the global state", "client 0", "client 1"])
    with pytest.raises(TypeError, match=r"^client 0's entry 'w' is a list"):
        check_compatible_states([good, {"w": [0.0, 0.0]}], names=["the global state", "client 0"])


def test_poisson_batches_per_epoch_rounds_to_the_nearest_count():
    from hf_ext.federated.privacy import poisson_batches_per_epoch

    # round(1 / q): q = 0.6 gives 2 batches (1.67 rounded), not 1 (truncated); q = 0.3 gives 3; at least 1
    assert poisson_batches_per_epoch(0.6) == 2
    assert poisson_batches_per_epoch(0.3) == 3
    assert poisson_batches_per_epoch(1.0) == 1
