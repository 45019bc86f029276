"""Pass 51 (Flower deployment): a SuperNode that stops during a run is dropped by the SuperLink after its missed
heartbeats; the next round used to wait for it without limit (Message API `FedAvg`: "Waiting for nodes to connect"
forever; SecAgg+'s legacy client manager: 24 h), whatever `round-timeout` and `accept-partial-rounds` said."""

import json
import threading

import pytest
from flwr.app import Context, RecordDict

from hf_ext.federated.flower_task import run_config_client_app, run_config_server_app

from .flower_harness import InProcessGrid


class StoppingNodeGrid(InProcessGrid):
    """An in-process grid on which the nodes in `fail_nodes` fail when asked to train and are then no longer
    connected (what the SuperLink reports once a killed SuperNode missed its heartbeats), and the nodes in `leave`
    answer the first `leave_after` exchanges and are then no longer connected (a SuperNode stopped between rounds)."""

    def __init__(self, *args, leave=(), leave_after=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.gone: set[int] = set()
        self.leave, self.leave_after, self.exchanges = set(leave), leave_after, 0

    def get_node_ids(self):
        return [n for n in self.node_ids if n not in self.gone]

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        self.exchanges += 1
        self.gone |= self.fail_nodes
        if self.exchanges >= self.leave_after:
            self.gone |= self.leave
        return replies


def _run(tmp_path, extra, limit=240.0, **grid_kwargs):
    """Run the App with 3 nodes (2 rounds, round-timeout 3 s); returns (outcome, output path). The ServerApp runs in a
    daemon thread so that a run that waits for a stopped node fails the test instead of hanging it."""
    out = tmp_path / "global.safetensors"
    rc = {
        "num-server-rounds": 2,
        "num-partitions": 3,
        "local-steps": 1,
        "dp-clip-norm": 0.0,
        "round-timeout": 3.0,
        **extra,
        "output-path": str(out),
        "work-dir": str(tmp_path / "work"),
    }
    grid = StoppingNodeGrid(run_config_client_app(), 3, run_config=rc, errors_as_replies=True, **grid_kwargs)
    outcome = {}

    def target():
        try:
            context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
            run_config_server_app()(grid, context)
            outcome["ok"] = True
        except Exception as err:
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), "the ServerApp still waits for a stopped node long after round-timeout"
    return outcome, out


@pytest.mark.parametrize("secure", [False, True])
def test_partial_rounds_go_on_without_a_node_that_stopped(tmp_path, secure):
    """accept-partial-rounds=true, node 3 killed while training round 1: round 1 aggregates the 2 survivors
    (SecAgg+: threshold 2 of 3), round 2 waits round-timeout for the third node, then samples the 2 connected
    ones, and the run writes its result (it used to wait for the dropped node: forever, SecAgg+ 24 h)."""
    outcome, out = _run(tmp_path, {"secure-aggregation": secure, "accept-partial-rounds": True}, fail_nodes=[3])
    assert outcome == {"ok": True}, outcome
    meta = json.loads(open(str(out) + ".json").read())
    assert [r["partition_ids"] for r in meta["rounds"]] == [[0, 1], [0, 1]]
    assert meta["all_rounds_complete"] is False


@pytest.mark.parametrize("secure", [False, True])
def test_a_node_stopped_between_rounds_fails_the_next_round_after_round_timeout(tmp_path, secure):
    """Every round must aggregate all 3 partitions (the App's default): node 3 answers round 1 and stops before
    round 2. Round 2 fails after round-timeout naming the round and the key, and nothing is written (the run used to
    wait for the node without limit, against the docs' "fails instead of hanging")."""
    stages = 4 if secure else 1  # exchanges per round: SecAgg+ has four stages
    outcome, out = _run(tmp_path, {"secure-aggregation": secure}, leave=[3], leave_after=stages)
    err = str(outcome.get("error"))
    assert type(outcome.get("error")).__name__ == "RoundFailedError", outcome
    assert "Round 2 failed: only 2 of the 3 nodes (num-partitions) were connected after waiting 3 s" in err
    assert "round-timeout" in err and "Nothing was written to output-path" in err
    assert not out.exists()


def test_secagg_with_fewer_connected_nodes_than_the_threshold_fails_under_partial_rounds(tmp_path):
    """accept-partial-rounds=true with SecAgg+ (3 nodes, threshold 2): nodes 2 and 3 stop after round 1; round 2
    cannot reach the threshold with 1 node and fails naming it instead of waiting."""
    outcome, out = _run(
        tmp_path, {"secure-aggregation": True, "accept-partial-rounds": True}, leave=[2, 3], leave_after=4
    )
    err = str(outcome.get("error"))
    assert "Round 2 failed: only 1 of the 3 nodes (num-partitions) were connected" in err, outcome
    assert "where 2 were required" in err
    assert not out.exists()
