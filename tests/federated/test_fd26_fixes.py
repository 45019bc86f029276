"""Pass-26 federated fixes.

F2: a client state with another key set, shape or dtype was reported as `client_states[i + 1]` against
`client_states[0]`, because the global state had been put first in the list. So the error blamed the next client,
named the server's own state as a client, and ignored `client_names`. The errors now name the client as the NaN check
does and compare it with "the global state".
"""

import pytest
import torch

from hf_ext.federated import FederatedArguments
from hf_ext.federated.aggregation import aggregate_round
from hf_ext.federated.simulation import aggregate_uploads

NAMES = [f"The client of partition-id {p} (node {100 + p}, round 1)" for p in range(3)]


@pytest.mark.parametrize(
    "what, bad, expected",
    [
        ("shape", {"m.lora_A.weight": torch.zeros(4, 9)}, r"sent 'm.lora_A.weight' with shape \(4, 9\), but the global "
         r"state has \(4, 8\)"),
        ("dtype", {"m.lora_A.weight": torch.zeros(4, 8, dtype=torch.float16)}, r"sent 'm.lora_A.weight' in dtype "
         r"torch.float16, but the global state has torch.float32"),
        ("keys", {"m.lora_B.weight": None}, r"sent other tensors than the global state has: missing keys "
         r"\['m.lora_B.weight'\]"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("bad_client", [0, 2])
def test_mismatch_errors_name_the_client_that_sent_it(what, bad, expected, bad_client):
    """The audit's repro: the error used to name `client_states[bad_client + 1]` and call the global state
    `client_states[0]`, ignoring `client_names`. Now it names the client as the NaN check does."""
    glob = {"m.lora_A.weight": torch.zeros(4, 8), "m.lora_B.weight": torch.zeros(8, 4)}
    wrong = {**glob, **bad}
    wrong = {k: v for k, v in wrong.items() if v is not None}
    ups = [dict(glob) for _ in range(3)]
    ups[bad_client] = wrong
    fed = FederatedArguments(use_lora=True, lora_r=4, lora_alpha=8)
    with pytest.raises(
        ValueError, match="^" + NAMES[bad_client].replace("(", r"\(").replace(")", r"\)") + " " + expected
    ):
        aggregate_uploads(glob, ups, [1.0, 1.0, 1.0], fed, 1, client_names=NAMES)
    with pytest.raises(ValueError, match=rf"^`client_states\[{bad_client}\]` " + expected):
        aggregate_round(glob, ups, [1.0, 1.0, 1.0])


def test_client_names_must_match_the_client_states():
    glob = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="`client_names` has 1 entries for 2 client states"):
        aggregate_round(glob, [dict(glob), dict(glob)], [1, 1], "full", client_names=["client 0"])
