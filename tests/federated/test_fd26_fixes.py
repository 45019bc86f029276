"""Pass-26 federated fixes.

F1: finite client uploads could still give a non-finite global state: in `merge_then_average` mode `scaling * B @ A`
of LoRA factors at 1e20 (computed in float64) is 8e40, and adding it to a float32 base weight gave inf. Only the
uploads were checked for NaN/inf, so the aggregation returned the inf state, and the simulation and the Flower
ServerApp applied it and wrote it as a complete run. The aggregate is now checked before it is returned
(`apply_mean_update`, used by every server path). `aggregate_round` also names the client whose update alone
overflows. The secure-aggregation paths, which see only the mean, refuse the state, and in Flower they fail the round.

F2: a client state with another key set, shape or dtype was reported as `client_states[i + 1]` against
`client_states[0]`, because the global state had been put first in the list. So the error blamed the next client,
named the server's own state as a client, and ignored `client_names`. The errors now name the client as the NaN check
does and compare it with "the global state".
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_ext.federated import FederatedArguments, NonFiniteStateError
from hf_ext.federated.aggregation import aggregate_round, apply_mean_update
from hf_ext.federated.simulation import aggregate_uploads, apply_secure_mean

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


def _merge_global():
    torch.manual_seed(0)
    return {
        "m.lora_A.weight": torch.randn(4, 8) * 0.1,
        "m.lora_B.weight": torch.zeros(8, 4),
        "m.base_layer.weight": torch.randn(8, 8),
    }


def _merge_upload(glob, a, b):
    dtype = glob["m.base_layer.weight"].dtype
    return {
        "m.lora_A.weight": torch.full((4, 8), a, dtype=dtype),
        "m.lora_B.weight": torch.full((8, 4), b, dtype=dtype),
        "m.base_layer.weight": glob["m.base_layer.weight"].clone(),
    }


@pytest.mark.parametrize("client_dp", [None, 1e42])
def test_merge_then_average_refuses_finite_uploads_whose_aggregate_overflows_naming_the_client(client_dp):
    """The audit's repro: the second of three clients uploads A = B = 1e20 (finite). s * B @ A = 2 * 4 * 1e40 does
    not fit in float32. The aggregate used to come back with 64 of 64 base-weight entries inf. With a clip norm
    large enough to let the update through, client-level DP fails the same way."""
    glob = _merge_global()
    ups = [_merge_upload(glob, 0.01, 0.0), _merge_upload(glob, 1e20, 1e20), _merge_upload(glob, 0.01, 0.01)]
    fed = FederatedArguments(
        use_lora=True, lora_r=4, lora_alpha=8, aggregation="merge_then_average", client_dp_clip_norm=client_dp
    )
    with pytest.raises(NonFiniteStateError) as err:
        aggregate_uploads(glob, ups, [1.0, 1.0, 1.0], fed, 1, num_clients=3, client_names=NAMES)
    msg = str(err.value)
    assert msg.startswith(f"{NAMES[1]}'s update makes the global state non-finite: the tensors it sent are finite")
    assert "'m.base_layer.weight' 64 of 64 NaN or inf entries" in msg
    assert "largest |update entry| is 8e+40; torch.float32 holds at most 3.4e+38" in msg
    assert "drop it from the round" in msg
    assert isinstance(err.value, ValueError)  # what the callers (and the docs) already handle
    assert (err.value.key, err.value.num_bad, err.value.numel) == ("m.base_layer.weight", 64, 64)
    # without client_names: the index of the client in client_states
    with pytest.raises(NonFiniteStateError, match=r"^`client_states\[1\]`'s update makes the global state non-finite"):
        aggregate_round(glob, ups, [1.0, 1.0, 1.0], "merge_then_average", 2.0, client_clip_norm=client_dp)


def test_two_overflowing_clients_are_both_named():
    glob = _merge_global()
    ups = [_merge_upload(glob, 1e20, 1e20), _merge_upload(glob, 0.01, 0.0), _merge_upload(glob, 3e19, 1e20)]
    with pytest.raises(
        NonFiniteStateError, match=r"^client 0's update .*\(1 more client\(s\) do the same: client 2\)"
    ):
        aggregate_round(
            glob, ups, [1, 1, 1], "merge_then_average", 2.0, client_names=["client 0", "client 1", "client 2"]
        )


def test_a_client_whose_float64_update_overflows_is_named():
    """Float64 states: factors of 1e160 are finite, but B @ A overflows float64 itself. This used to be refused as
    "`client_states[1]` sent a non-finite tensor 'm'" (an index into the updates), which blamed the wrong client and
    said it had sent a tensor it never sent."""
    glob = {k: v.double() for k, v in _merge_global().items()}
    ups = [_merge_upload(glob, 0.01, 0.0), _merge_upload(glob, 0.01, 0.0), _merge_upload(glob, 1e160, 1e160)]
    with pytest.raises(
        ValueError, match=r"^client 2's update 'm' is not finite \(64 of 64 entries are NaN or inf in "
    ):
        aggregate_round(
            glob, ups, [1, 1, 1], "merge_then_average", 2.0, client_names=["client 0", "client 1", "client 2"]
        )


def test_apply_mean_update_refuses_a_state_that_overflows_its_dtype():
    """`apply_mean_update`, the last step of every server path, refuses a non-finite result: a float16 state plus a
    finite update of 1e5 (float16 holds at most 65504)."""
    glob = {"w": torch.zeros(3, dtype=torch.float16), "v": torch.ones(2, dtype=torch.float16)}
    with pytest.raises(
        NonFiniteStateError, match=r"The aggregated global state is not finite: 'w' has 1 of 3 entries"
    ):
        apply_mean_update(glob, {"w": torch.tensor([1.0, 1e5, -2.0], dtype=torch.float64)}, "full")
    with pytest.raises(NonFiniteStateError, match="the update itself has NaN or inf entries"):
        apply_mean_update(glob, {"v": torch.tensor([1.0, float("nan")], dtype=torch.float64)}, "full")
    out = apply_mean_update(glob, {"w": torch.tensor([1.0, 6e4, -2.0], dtype=torch.float64)}, "full")
    assert out["w"].tolist() == [1.0, 60000.0, -2.0]


def test_secure_aggregation_server_step_refuses_a_non_finite_state():
    """The in-process secure aggregation applies the unmasked mean with `apply_secure_mean`. It sees only the mean,
    so it names the tensor but no client."""
    fed = FederatedArguments(use_lora=False, secure_aggregation=True)
    glob = {"w": torch.zeros(4, dtype=torch.float16)}
    with pytest.raises(NonFiniteStateError, match=r"'w' has 2 of 4 entries NaN or inf .* exceeds 6\.55e\+04"):
        apply_secure_mean(glob, {"w": torch.tensor([1e5, -1e5, 0.0, 1.0])}, [1.0, 1.0], fed, 1)


def test_flower_secagg_strategy_fails_the_round_instead_of_applying_a_non_finite_state():
    """The Flower SecAgg+ strategy received a finite mean (8e40 in float64) and applied it: the float32 global state
    became inf. It now fails the round (the ServerApp raises `monitor.failure` and calls no `on_finish`) and keeps the
    global state."""
    pytest.importorskip("flwr")
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from hf_ext.federated.flower import _RoundMonitor, make_secagg_strategy

    fed = FederatedArguments(use_lora=False, secure_aggregation=True)
    initial = {"w": torch.zeros(2, 3)}
    monitor = _RoundMonitor(2, None, None)
    strategy = make_secagg_strategy(fed, initial, 2, 0, monitor=monitor)
    mean = ndarrays_to_parameters([np.full((2, 3), 8e40, dtype=np.float64)])
    results = [
        (SimpleNamespace(node_id=n), FitRes(Status(Code.OK, ""), mean, 10, {"partition-id": n - 1})) for n in (1, 2)
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert params is None
    assert monitor.failure is not None
    assert "Round 1 failed: The aggregated global state is not finite: 'w' has 6 of 6 entries" in str(monitor.failure)
    assert torch.equal(strategy.global_state["w"], initial["w"])
    good = ndarrays_to_parameters([np.full((2, 3), 0.5, dtype=np.float64)])  # control: a finite state is applied
    strategy = make_secagg_strategy(fed, initial, 2, 0, monitor=_RoundMonitor(2, None, None))
    results = [(p, FitRes(r.status, good, r.num_examples, r.metrics)) for p, r in results]
    assert strategy.aggregate_fit(1, results, [])[0] is not None
    assert torch.equal(strategy.global_state["w"], torch.full((2, 3), 0.5))


def test_flower_server_app_refuses_a_finite_upload_whose_merge_overflows_and_writes_nothing():
    """The plain Flower path (`FederatedLoRAStrategy` through `make_server_app`, in-process grid): the node of
    partition-id 1 sends LoRA factors at 1e20. The run used to finish and hand an inf base weight to `on_finish`.
    It now fails, naming that partition, before `on_finish`."""
    pytest.importorskip("flwr")
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from hf_ext.federated import make_server_app

    from .conftest import tiny_llama
    from .flower_harness import InProcessGrid

    fed = FederatedArguments(num_rounds=1, lora_r=2, lora_alpha=4, aggregation="merge_then_average")
    app = ClientApp()

    @app.train()
    def train(msg, context):
        pid = int(context.node_config["partition-id"])
        state = msg.content["arrays"].to_torch_state_dict()
        if pid == 1:
            state = {k: torch.full_like(v, 1e20) if ".lora_" in k else v for k, v in state.items()}
        metrics = MetricRecord({"num-examples": 10, "partition-id": pid})
        return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)

    out = {}
    server = make_server_app(lambda: tiny_llama(64, hidden=16), fed, 2, on_finish=lambda s, r: out.update(s))
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(NonFiniteStateError, match=r"^The client of partition-id 1 \(node 2, round 1\)'s update makes"):
        server(InProcessGrid(app, 2), ctx)
    assert not out
