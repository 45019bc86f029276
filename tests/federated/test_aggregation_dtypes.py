"""Client states whose tensors differ in dtype are refused before aggregation, by name."""

import pytest
import torch

from hf_ext.federated import fedavg
from hf_ext.federated.aggregation import aggregate_round, check_compatible_states


@pytest.mark.parametrize(
    "first, second",
    [
        (torch.tensor([1, 2]), torch.tensor([100.0, 200.0])),  # integer first: the float values would be dropped
        (torch.tensor([1.0, 2.0], dtype=torch.float16), torch.tensor([3.0, 4.0], dtype=torch.float64)),
    ],
)
def test_a_dtype_mismatch_is_refused(first, second):
    with pytest.raises(ValueError, match=r"`client_states\[1\]` sent 'w' in dtype"):
        check_compatible_states([{"w": first}, {"w": second}])
    with pytest.raises(ValueError, match="dtype"):
        fedavg([{"w": first}, {"w": second}], [1, 1])


def test_a_client_in_another_precision_than_the_global_state_is_refused():
    glob = {"lora_A": torch.zeros(2, 3)}
    client = {"lora_A": torch.ones(2, 3, dtype=torch.bfloat16)}
    with pytest.raises(ValueError, match="dtype"):
        aggregate_round(glob, [client], [1])


def test_matching_dtypes_still_average():
    out = fedavg([{"w": torch.tensor([1.0, 3.0])}, {"w": torch.tensor([3.0, 5.0])}], [1, 3])
    torch.testing.assert_close(out["w"], torch.tensor([2.5, 4.5]))
