"""Pass-22 federated fixes.

F1: in the Flower SecAgg+ path a malicious server sent every node but a victim its own SecAgg+ setup
(`max_weight=1e12`: flwr's `secaggplus_mod` scales their uploads by `round(n / 1e12 * 2^22) = 0`), with the same
arrays and run config for all, so a digest check of those passed and the "mean" the server unmasked was the victim's
update. hf_ext's round guard checked only the round id and the threshold. Every node now refuses a setup whose
`max_weight`, `clipping_range`, `target_range` or `mod_range` differ from what its own configuration implies
(`secagg_setup_parameters`). A weight that rounds to 0 is refused by the node whatever `refuse_imprecise`, and a
server whose unmasked mean is not finite (every weight rounded to 0: a division by 0 in flwr) fails the round
instead of applying a NaN state.
"""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_ext.federated import FederatedArguments

flwr = pytest.importorskip("flwr")


def _setup_message(round_id, configs):
    from flwr.app import ConfigRecord, RecordDict
    from flwr.app.message_type import MessageType
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    record = ConfigRecord({Key.STAGE: Stage.SETUP, **configs})
    meta = SimpleNamespace(message_type=MessageType.TRAIN, dst_node_id=1, group_id=str(round_id))
    return SimpleNamespace(metadata=meta, content=RecordDict({RECORD_KEY_CONFIGS: record}))


def _context():
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


@pytest.mark.parametrize(
    "key,value",
    [
        ("max_weight", 1e12),  # the audit's attack: every node but the victim scaled to weight 0
        ("max_weight", 1000.0),  # Flower's default, where this node's configuration says 500
        ("clipping_range", 1e-9),
        ("clipping_range", 8.0),
        ("target_range", 2**10),
        ("mod_range", 2**31),
        ("max_weight", True),  # not a number
        ("max_weight", None),  # missing
    ],
)
def test_node_refuses_a_setup_with_other_secagg_parameters_than_its_configuration(key, value):
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    from hf_ext.federated.flower import secagg_client_mods, secagg_setup_parameters

    fed = FederatedArguments(secure_aggregation=True, secagg_max_weight=500.0, secagg_clipping_range=4.0)
    params = secagg_setup_parameters(fed)
    assert params == {Key.MAX_WEIGHT: 500.0, Key.CLIPPING_RANGE: 4.0, Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32}
    guard = secagg_client_mods(fed)[0]  # the round guard of every hf_ext SecAgg+ ClientApp
    honest = {Key.SAMPLE_NUMBER: 3, Key.SHARE_NUMBER: 3, Key.THRESHOLD: 2, **params}
    changed = dict(honest)
    if value is None:
        del changed[key]
    else:
        changed[key] = value
    passed, ctx = [], _context()
    with pytest.raises(ValueError, match=re.escape(f"SecAgg+ setup refused: the server sent {key}=")) as err:
        guard(_setup_message(1, changed), ctx, lambda m, c: passed.append(m))
    assert f"implies {key}={params[key]!r}" in str(err.value) and f"{key}={value!r}" in str(err.value)
    assert not passed
    guard(_setup_message(1, honest), ctx, lambda m, c: passed.append(m))  # the refused setup recorded no round
    assert len(passed) == 1


def test_under_client_level_dp_the_node_expects_max_weight_one():
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    from hf_ext.federated.flower import secagg_client_mods, secagg_setup_parameters

    fed = FederatedArguments(secure_aggregation=True, client_dp_clip_norm=1.0)
    params = secagg_setup_parameters(fed)
    assert params[Key.MAX_WEIGHT] == 1.0
    guard = secagg_client_mods(fed)[0]
    configs = {Key.SAMPLE_NUMBER: 3, Key.SHARE_NUMBER: 3, Key.THRESHOLD: 2, **params, Key.MAX_WEIGHT: 1000.0}
    with pytest.raises(ValueError, match=r"max_weight=1000.0, but this node's configuration implies max_weight=1.0"):
        guard(_setup_message(1, configs), _context(), lambda m, c: None)


def test_round_guard_needs_the_setup_parameters():
    from hf_ext.federated.flower import make_secagg_round_guard_mod

    with pytest.raises(TypeError, match="setup_parameters"):
        make_secagg_round_guard_mod(0)
    with pytest.raises(ValueError, match="setup_parameters"):
        make_secagg_round_guard_mod(0, setup_parameters={"max_weight": 1.0})


def _fixed_update_federation(fed, node_weight=10):
    """A 3-node Flower SecAgg+ federation whose clients return a fixed update (the attack needs no training)."""
    from flwr.client import NumPyClient

    from hf_ext.federated.flower import initial_global_state

    from .conftest import tiny_llama

    def model_fn():
        return tiny_llama(64, hidden=16)

    start = initial_global_state(model_fn, fed, 0)
    keys = sorted(start)

    def update_of(pid):
        rng = np.random.default_rng(pid)
        return [rng.normal(0, 0.05, tuple(start[k].shape)).astype(np.float32) for k in keys]

    class FixedClient(NumPyClient):
        def __init__(self, pid):
            self.pid = pid

        def fit(self, parameters, config):
            return update_of(self.pid), node_weight, {"train_loss": 0.0}

    return model_fn, start, keys, update_of, FixedClient


def _malicious_grid(client_app, victim, changes):
    """The audit's server: the same arrays and run config for every node, but every node except `victim` gets a
    SecAgg+ setup with `changes` applied."""
    import copy

    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    from .flower_harness import InProcessGrid

    class MaliciousGrid(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            for m in messages:
                cfgs = m.content.config_records.get(RECORD_KEY_CONFIGS)
                if cfgs is not None and cfgs.get(Key.STAGE) == Stage.SETUP and m.metadata.dst_node_id != victim:
                    m.content = copy.deepcopy(m.content)  # the workflow shares one content between nodes
                    m.content.config_records[RECORD_KEY_CONFIGS].update(changes)
            return super().send_and_receive(messages, timeout=timeout)

    return MaliciousGrid(client_app, 3, errors_as_replies=True)


def test_per_node_max_weight_attack_is_refused_by_the_other_nodes():
    """The audit's repro, with fixed updates: without hf_ext's round guard (control: the unmask guard and flwr's mod)
    the server unmasks the victim's update as the "mean"; with `secagg_client_mods` the two other nodes refuse the
    setup, the round halts and the global state is unchanged (or the run fails with `min_round_clients`)."""
    from flwr.app import Context, RecordDict
    from flwr.client import ClientApp
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    from hf_ext.federated import make_server_app
    from hf_ext.federated.flower import RoundFailedError, secagg_client_mods, secagg_unmask_guard_mod

    fed = FederatedArguments(num_rounds=1, local_steps=1, lora_r=2, secure_aggregation=True, secagg_max_weight=100.0)
    model_fn, start, keys, update_of, FixedClient = _fixed_update_federation(fed)
    victim_node, victim_pid = 2, 1
    victim = np.concatenate([a.ravel() for a in update_of(victim_pid)])

    def run(mods, min_round_clients=None):
        app = ClientApp(client_fn=lambda c: FixedClient(int(c.node_config["partition-id"])).to_client(), mods=mods)
        grid = _malicious_grid(app, victim_node, {Key.MAX_WEIGHT: 1e12})
        out = {}
        server = make_server_app(
            model_fn, fed, 3, on_finish=lambda s, r: out.update(s), min_round_clients=min_round_clients
        )
        server(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
        return grid, out

    _, leaked = run([secagg_unmask_guard_mod, secaggplus_mod])  # control: the attack works without the round guard
    mean = np.concatenate([(leaked[k] - start[k]).numpy().ravel() for k in keys])
    assert float(np.abs(mean - victim).max()) < 1e-4  # the "mean" is the victim's update

    grid, out = run(secagg_client_mods(fed))
    refused = sorted(
        n for n, e in grid.client_errors if "setup refused: the server sent max_weight=1000000000000.0" in e
    )
    assert refused == [1, 3]
    assert all("implies max_weight=100.0" in e for _, e in grid.client_errors)
    assert all(torch.equal(out[k], start[k]) for k in keys)  # nothing aggregated, nothing learned
    with pytest.raises(RoundFailedError, match="setup stage"):
        run(secagg_client_mods(fed), min_round_clients=3)


def test_node_refuses_an_upload_whose_secagg_weight_rounds_to_zero_even_when_imprecision_is_allowed():
    from hf_ext.federated.flower import check_secagg_range

    fed = FederatedArguments(secure_aggregation=True, secagg_max_weight=1e12)
    update = {"w": torch.full((4,), 0.01)}
    for upd in (update, {"w": torch.zeros(4)}):  # an all-zero update too: its weight would still leave the mean
        for refuse in (True, False):
            with pytest.raises(ValueError, match=r"num_examples / max_weight = 10 / 1e\+12 rounds to 0"):
                check_secagg_range(upd, 10, fed, refuse_imprecise=refuse)
    # weight 10 keeps one level up to max_weight 10 * 2^23 = 8.39e7 and rounds to 0 above it
    check_secagg_range({"w": torch.zeros(4)}, 10, FederatedArguments(secure_aggregation=True, secagg_max_weight=8e7))
    with pytest.raises(ValueError, match="rounds to 0"):
        check_secagg_range(update, 10, FederatedArguments(secure_aggregation=True, secagg_max_weight=9e7), False)


def test_server_fails_the_round_instead_of_applying_a_nan_mean_when_every_weight_rounds_to_zero():
    """Clients that do not run hf_ext's upload check (here fixed-update clients behind hf_ext's guards) with a
    `secagg_max_weight` so large that every weight rounds to 0: flwr divides the unmasked sum by 0. The server used to
    apply the resulting NaN state; it now fails the round and keeps the global state."""
    from flwr.app import Context, RecordDict
    from flwr.client import ClientApp

    from hf_ext.federated import make_server_app
    from hf_ext.federated.flower import RoundFailedError, secagg_client_mods

    from .flower_harness import InProcessGrid

    fed = FederatedArguments(num_rounds=1, local_steps=1, lora_r=2, secure_aggregation=True, secagg_max_weight=1e12)
    model_fn, start, keys, _, FixedClient = _fixed_update_federation(fed)
    app = ClientApp(
        client_fn=lambda c: FixedClient(int(c.node_config["partition-id"])).to_client(), mods=secagg_client_mods(fed)
    )
    out = {}
    server = make_server_app(model_fn, fed, 3, on_finish=lambda s, r: out.update(s))
    with np.errstate(divide="ignore", invalid="ignore"), pytest.raises(RoundFailedError, match="not finite"):
        server(InProcessGrid(app, 3), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    assert not out
