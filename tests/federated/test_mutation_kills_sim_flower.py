"""Mutation-testing gaps of the Flower server/client checks and the in-process simulation that the other federated
tests let through. Expected values come from the documented rules (argument ranges, the secure-aggregation
threshold, the DP-FedAvg weights and denominator, the FedAvg round loop), not from snapshots of current outputs."""

import pytest
import torch

from hf_ext.federated import FederatedArguments
from hf_ext.federated.flower import _checked_secagg_workflow, _RoundMonitor, check_secagg_range, make_server_app
from hf_ext.federated.simulation import apply_secure_mean, get_exchange_state

from .conftest import tiny_simulation


def test_secagg_range_refuses_more_examples_than_max_weight():
    """SecAgg+ scales an upload by `num_examples / max_weight`; a ratio above 1 cannot be represented (the client
    weight would exceed the server's bound), so `check_secagg_range` must refuse any `num_examples > max_weight`,
    not only gross excesses. A bound loosened to `ratio > 2` let 1.5x through."""
    fed = FederatedArguments(use_lora=False, secure_aggregation=True, secagg_max_weight=100.0)
    update = {"w": torch.full((8,), 1e-3)}
    check_secagg_range(update, 100, fed)  # exactly max_weight: accepted
    for n in (101, 150, 199):
        with pytest.raises(ValueError, match="exceeds the SecAgg"):
            check_secagg_range(update, n, fed)


class _Untouchable:
    """A grid / context stand-in that fails the test on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"the workflow touched `{name}` after the run had already failed")


def test_secagg_workflow_sends_nothing_once_a_round_has_failed():
    """Documented: once a round has failed, the remaining SecAgg+ rounds send nothing (the ServerApp raises the
    first failure after the workflow). Without the early return a failed run kept training and messaging every
    client for all remaining rounds."""
    monitor = _RoundMonitor(num_clients=2, min_round_clients=2, timeout=None)
    monitor.fail(1, "test failure")
    workflow = _checked_secagg_workflow(
        monitor,
        num_shares=1.0,
        reconstruction_threshold=2,
        max_weight=1000.0,
        clipping_range=8.0,
        quantization_range=2**22,
        timeout=None,
    )
    assert workflow(_Untouchable(), _Untouchable()) is None


@pytest.mark.parametrize("min_round_clients", [0, -1, 4])
def test_min_round_clients_outside_one_to_num_clients_is_refused(min_round_clients):
    """`min_round_clients` must lie in [1, num_clients]: 0 would accept a round without any update as a success,
    more than `num_clients` would fail every round. Without the check such values were taken silently."""
    fed = FederatedArguments(use_lora=False, num_rounds=1)
    with pytest.raises(ValueError, match="min_round_clients"):
        make_server_app(lambda: None, fed, num_clients=3, min_round_clients=min_round_clients)
    make_server_app(lambda: None, fed, num_clients=3, min_round_clients=3)  # the upper bound itself is fine


def _client_dp_secure_args(**overrides):
    return FederatedArguments(
        use_lora=False,
        secure_aggregation=True,
        client_dp_clip_norm=1.0,
        client_dp_noise_multiplier=0.5,
        client_dp_noise_seed=0,
        **overrides,
    )


def test_secure_mean_under_client_dp_refuses_example_weights():
    """Under client-level DP every client uploads with weight 1 (uniform DP-FedAvg); the server only sees the weighted
    mean, so example weights would silently change the sensitivity the noise is calibrated for. `apply_secure_mean`
    must refuse them; without the check weights [3, 1] were accepted and noised as if uniform."""
    fed = _client_dp_secure_args()
    state = {"w": torch.zeros(4, dtype=torch.float64)}
    mean = {"w": torch.full((4,), 0.1, dtype=torch.float64)}
    with pytest.raises(ValueError, match="weight 1"):
        apply_secure_mean(state, mean, [3.0, 1.0], fed, 1, num_clients=2)
    apply_secure_mean(state, mean, [1.0, 1.0], fed, 1, num_clients=2)


@pytest.mark.parametrize("num_clients", [1, 2.0])
def test_secure_mean_under_client_dp_refuses_a_federation_smaller_than_the_uploads(num_clients):
    """The fixed DP-FedAvg denominator `num_clients` (the federation size) can never be below the number of uploads
    nor a non-integer: rescaling by `len(weights) / num_clients` would inflate the update past the clip bound the
    noise assumes. Without the check num_clients=1 for 2 uploads doubled the mean silently."""
    fed = _client_dp_secure_args()
    state = {"w": torch.zeros(4, dtype=torch.float64)}
    mean = {"w": torch.full((4,), 0.1, dtype=torch.float64)}
    with pytest.raises(ValueError, match="num_clients"):
        apply_secure_mean(state, mean, [1.0, 1.0], fed, 1, num_clients=num_clients)


@pytest.mark.parametrize("n,c,t,ok", [(4, 0, 3, True), (4, 0, 2, False), (5, 1, 3, False), (5, 1, 4, True)])
def test_explicit_threshold_needs_a_strict_honest_majority(n, c, t, ok):
    """`2t > n + max_colluders` must hold strictly: at `2t == n + c` a server lying about dropouts together with c
    colluders can gather t shares of both secrets of one client. `>=` accepted t=2 for 4 clients."""
    fed = FederatedArguments(secure_aggregation_threshold=t, secure_aggregation_max_colluders=c)
    if ok:
        assert fed.threshold(n) == t
    else:
        with pytest.raises(ValueError, match="threshold"):
            fed.threshold(n)


def test_loading_a_round_saved_with_another_number_of_clients_is_refused(tmp_path):
    """A saved round holds one privacy accountant per client; restoring it into a simulation with more clients
    would leave the extra clients' accountants at zero steps (their epsilon under-reported) and with fewer would
    drop some. Without the count check a 2-client round loaded silently into a 3-client simulation."""
    tiny_simulation(tmp_path, num_clients=2, use_lora=False).save_state(str(tmp_path / "round-0"))
    with pytest.raises(ValueError, match="clients"):
        tiny_simulation(tmp_path, num_clients=3, use_lora=False).load_state(str(tmp_path / "round-0"))
    # same federation size: fine
    tiny_simulation(tmp_path, num_clients=2, use_lora=False).load_state(str(tmp_path / "round-0"))


def test_model_holds_the_aggregated_global_state_after_a_round(tmp_path):
    """After each round the simulation's model must carry the new global (FedAvg) state, which round callbacks and
    the recipe evaluate. Without the sync it kept the last client's locally trained weights."""
    sim = tiny_simulation(tmp_path, num_clients=2, use_lora=False)
    seen = []
    sim.round_callback = lambda r, s: seen.append(get_exchange_state(s.model, s.keys)) or {}
    sim.run()
    last_client = seen[-1]
    for k, v in sim.global_state.items():
        torch.testing.assert_close(last_client[k], v, atol=0, rtol=0)
    assert any(not torch.equal(v, seen[0][k]) for k, v in sim.global_state.items())  # the round changed the state
