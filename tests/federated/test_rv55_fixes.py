"""Audit rv55: attacks on the node privacy ledger (`dp-ledger`) by a server that controls the run config."""

from hf_ext.federated import flower
from hf_ext.federated.flower import read_privacy_ledger

from .test_fl53_ledger import _fresh_warning, _grid, _ledger_steps, _rc, _train  # noqa: F401


def test_a_round_trained_concurrently_with_another_of_the_same_run_is_not_lost_from_the_ledger(tmp_path, monkeypatch):
    """Rounds 2 and 3 of one run in flight at once on one node (both restore the accountant of round 1): the one that
    finishes second held as many steps as the ledger already records for the run, which "extends" the entry; it was
    uploaded and recorded over the first (3 releases, 2 steps on record). The post-training check compares the ledger with the history before this round."""
    ledger = str(tmp_path / "ledger.json")
    node = {"dp-ledger": ledger}  # the ledger alone (a bound below 3 rounds would refuse the run's plan up front)
    rc = _rc(tmp_path, 1, rounds=3)
    grid = _grid(rc, 1, node)
    assert not _train(grid, rc, 1).has_error()
    real = flower.train_client
    inner = []

    def train_client(*args, **kwargs):
        out = real(*args, **kwargs)
        if not inner:  # while round 2 trains, round 3 arrives and completes
            inner.append(None)
            inner[0] = _train(grid, rc, 3)
        return out

    monkeypatch.setattr(flower, "train_client", train_client)
    outer = _train(grid, rc, 2)
    assert not inner[0].has_error()
    released = 2 + (not outer.has_error())  # rounds uploaded from this partition
    recorded = _ledger_steps(ledger)[1]
    assert recorded == released, f"{released} DP-SGD rounds released, the ledger records {recorded} steps"
    assert outer.has_error() and "records more DP-SGD for run 1" in grid.client_errors[-1][1]


def test_two_nodes_of_one_partition_training_at_once_are_both_recorded(tmp_path, monkeypatch):
    """Two SuperNodes serving partition-id 0 on one ledger, both asked round 1 of run 1 at once: each accountant holds
    one step and the second "extends" the entry the first wrote, so 2 releases were recorded as 1."""
    ledger = str(tmp_path / "ledger.json")
    rc = _rc(tmp_path, 1)
    grid = _grid(rc, 1, {"dp-ledger": ledger}, nodes=2)
    grid.contexts[2].node_config["partition-id"] = 0
    real = flower.train_client
    inner = []

    def train_client(*args, **kwargs):
        out = real(*args, **kwargs)
        if not inner:
            inner.append(None)
            inner[0] = _train(grid, rc, 1, node=2)
        return out

    monkeypatch.setattr(flower, "train_client", train_client)
    outer = _train(grid, rc, 1, node=1)
    assert not inner[0].has_error()
    released = 1 + (not outer.has_error())
    assert sum(n for e in read_privacy_ledger(ledger) for _, _, n in e["history"]) == released
    assert outer.has_error()
