"""Audit fl53: a node-level privacy budget across Flower runs. A node's `dp-max-epsilon` used to bound each run id on
its own: a server that submitted a second run on the same data got it through (each run within the bound, their
composition above it). With the node-config `dp-ledger` (a node-local file the operator chooses), every round is
checked against the composition of all runs on record for the partition."""

import dataclasses
import json
import os

import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from hf_ext.federated import flower
from hf_ext.federated.flower import (
    PrivacyHistoryUnknownError,
    PrivacyLedgerError,
    compose_ledger,
    initial_global_state,
    make_client_app,
    read_privacy_ledger,
)
from hf_ext.federated.flower_task import planned_epsilon, run_config_client_app, task_from_run_config
from hf_ext.federated.privacy import PrivacyAccountant

from .flower_harness import InProcessGrid

DP = {"local-steps": 1, "dp-clip-norm": 1.0, "dp-noise-multiplier": 1.0, "secure-aggregation": False}


def _rc(tmp_path, run_id, rounds=1):
    # each run its own work-dir (the server's choice): the ledger must not depend on it
    return {"num-server-rounds": rounds, "work-dir": str(tmp_path / f"work-{run_id}"), **DP}


def _epsilon(tmp_path, rounds, pid=0):
    """The planned epsilon at delta 1e-5 of `rounds` one-step rounds on partition `pid` (of 2)."""
    task = task_from_run_config({**_rc(tmp_path, 0, rounds), "num-partitions": 2})
    return planned_epsilon(task, pid, 1e-5)


def _grid(rc, run_id, node_config, nodes=1, app=None):
    """A fresh run on the node(s): a new context (Flower gives each run its own) with the same node config."""
    grid = InProcessGrid(
        app or run_config_client_app(),
        nodes,
        run_config=rc,
        errors_as_replies=True,
        node_config={"num-partitions": 2, **node_config},
    )
    for context in grid.contexts.values():
        context.run_id = run_id
    return grid


def _train(grid, rc, r, node=1):
    task = task_from_run_config(rc)
    state = initial_global_state(task.model_fn, task.fed_args, task.seed)
    content = RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": r})})
    [reply] = grid.send_and_receive([grid.create_message(content, "train", node, "")])
    return reply


def _ledger_steps(path, pid=0):
    return {
        e["run_id"]: sum(n for _, _, n in e["history"]) for e in read_privacy_ledger(path) if e["partition_id"] == pid
    }


@pytest.fixture(autouse=True)
def _fresh_warning(monkeypatch):
    monkeypatch.setattr(flower, "_PER_RUN_BOUND_WARNED", [])


def test_a_second_run_is_refused_by_the_nodes_total_with_the_ledger_and_passes_without(tmp_path):
    """The defect: two runs of one DP-SGD step each, a node bound between the epsilon of one run and of both. Without
    `dp-ledger` the second run trains (each run is within the bound: today's per-run bound, with a warning naming
    `dp-ledger`); with it, the second run is refused before training, naming the runs, and the ledger is unchanged."""
    one, two = _epsilon(tmp_path, 1), _epsilon(tmp_path, 2)
    assert one < two
    bound = {"dp-max-epsilon": (one + two) / 2}
    # without the ledger: both runs train (the per-run bound), with a one-time warning
    with pytest.warns(UserWarning, match="bounds each Flower run on its own.*dp-ledger") as record:
        for run_id in (1, 2):
            rc = _rc(tmp_path / "no-ledger", run_id)
            reply = _train(_grid(rc, run_id, bound), rc, 1)
            assert not reply.has_error()
    assert len([w for w in record if "dp-ledger" in str(w.message)]) == 1
    # with the ledger: the second run is refused
    ledger = str(tmp_path / "node" / "ledger.json")
    os.makedirs(os.path.dirname(ledger))
    node = {**bound, "dp-ledger": ledger}
    rc1 = _rc(tmp_path, 1)
    reply = _train(_grid(rc1, 1, node), rc1, 1)
    assert not reply.has_error()
    assert _ledger_steps(ledger) == {1: 1}
    before = open(ledger).read()
    rc2 = _rc(tmp_path, 2)
    grid = _grid(rc2, 2, node)
    reply = _train(grid, rc2, 1)
    assert reply.has_error()
    text = grid.client_errors[-1][1]
    assert "Training round 1" in text and "total epsilon on partition-id 0 across runs 1, 2" in text
    assert f"{two:.4g} at delta 1e-05" in text and "dp-max-epsilon=" in text and "`dp-ledger`" in text
    assert "privacy" not in grid.contexts[1].state  # nothing trained
    assert open(ledger).read() == before  # no ledger write for a refused round


@pytest.mark.parametrize("kind", ["pld", "rdp"])
def test_the_composition_matches_an_independent_accounting(tmp_path, kind):
    """Three runs (1, 2 and 1 rounds) on one partition under `kind`: the ledger's composition is the epsilon of a
    fresh accountant stepping every recorded event (for RDP: dp-accounting's RdpAccountant directly), and the
    refusal of a fourth run names that number for the four runs."""
    import dp_accounting

    ledger = str(tmp_path / "ledger.json")
    for run_id, rounds in ((1, 1), (2, 2), (3, 1)):
        rc = _rc(tmp_path, run_id, rounds)
        task = task_from_run_config(rc)
        app = make_client_app(
            task.model_fn, task.dataset_fn, task.fed_args, dataclasses.replace(task.training_args, dp_accountant=kind)
        )
        grid = _grid(rc, run_id, {"dp-ledger": ledger}, app=app)
        for r in range(1, rounds + 1):
            assert not _train(grid, rc, r).has_error()
    entries = read_privacy_ledger(ledger)
    assert _ledger_steps(ledger) == {1: 1, 2: 2, 3: 1}
    assert {e["accountant"] for e in entries} == {kind} and {e["dp_delta"] for e in entries} == {1e-5}
    events = [tuple(h) for e in entries for h in e["history"]]
    fresh = PrivacyAccountant(kind)
    for q, s, n in events:
        fresh.step(q, s, n)
    composed = compose_ledger(entries, PrivacyAccountant(kind)).get_epsilon(1e-5)
    assert composed == fresh.get_epsilon(1e-5)
    if kind == "rdp":
        rdp = dp_accounting.rdp.RdpAccountant()
        for q, s, n in events:
            rdp.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n)
        assert composed == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-12)
    # a fourth run of one round, with a bound below the total of the four: refused, naming the independent number
    fresh.step(*events[-1])
    total = fresh.get_epsilon(1e-5)
    rc = _rc(tmp_path, 4)
    task = task_from_run_config(rc)
    app = make_client_app(
        task.model_fn, task.dataset_fn, task.fed_args, dataclasses.replace(task.training_args, dp_accountant=kind)
    )
    grid = _grid(rc, 4, {"dp-ledger": ledger, "dp-max-epsilon": composed + (total - composed) / 2}, app=app)
    assert _train(grid, rc, 1).has_error()
    assert "across runs 1, 2, 3, 4 (this run: 4; 5 DP-SGD steps" in grid.client_errors[-1][1]
    assert f"to {total:.4g} at delta 1e-05" in grid.client_errors[-1][1]


def test_a_corrupted_malformed_or_foreign_ledger_refuses(tmp_path):
    """A ledger that cannot be read, is not a ledger, or records the partition under another accountant is a named
    refusal (never an empty history), and the file is left as it was; so is a ledger whose folder is missing."""
    ledger = tmp_path / "ledger.json"
    rc = _rc(tmp_path, 1)
    good = {"format": "hf_ext-dp-ledger", "version": 1, "entries": []}
    entry = {"run_id": 9, "partition_id": 0, "accountant": "pld", "history": [[0.05, 1.0, 3]]}
    cases = [
        ('{"format": "hf_ext-dp-ledger", "entries": [', "cannot be read"),
        (json.dumps([]), "is not an hf_ext privacy ledger"),
        (json.dumps({**good, "version": 2}), "version 2 is not 1"),
        (json.dumps({**good, "entries": [{**entry, "history": [[0.05, 1.0]]}]}), "is not a privacy history"),
        (json.dumps({**good, "entries": [{**entry, "run_id": "9"}]}), "no integer run_id"),
        (json.dumps({**good, "entries": [entry, entry]}), "recorded twice"),
        (
            json.dumps({**good, "entries": [{**entry, "accountant": "rdp"}]}),
            "records runs [9] of partition-id 0 under",
        ),
    ]
    for text, match in cases:
        ledger.write_text(text)
        grid = _grid(rc, 1, {"dp-ledger": str(ledger)})
        assert _train(grid, rc, 1).has_error()
        assert match in grid.client_errors[-1][1]
        assert ledger.read_text() == text and "privacy" not in grid.contexts[1].state
        with pytest.raises(PrivacyLedgerError, match="refuses"):
            if match.startswith("records runs"):
                flower._ledger_runs(str(ledger), read_privacy_ledger(str(ledger)), 1, 0, PrivacyAccountant("pld"))
            else:
                read_privacy_ledger(str(ledger))
    assert issubclass(PrivacyLedgerError, PrivacyHistoryUnknownError)
    grid = _grid(rc, 1, {"dp-ledger": str(tmp_path / "missing" / "ledger.json")})
    assert _train(grid, rc, 1).has_error() and "does not exist" in grid.client_errors[-1][1]
    # a partition the foreign entries do not touch still trains (the ledger is otherwise well formed)
    ledger.write_text(json.dumps({**good, "entries": [{**entry, "partition_id": 1, "accountant": "rdp"}]}))
    assert not _train(_grid(rc, 1, {"dp-ledger": str(ledger)}), rc, 1).has_error()


@pytest.mark.parametrize("value", ["", "  ", 3, True, 1.5])
def test_a_ledger_that_is_not_a_path_is_refused(tmp_path, value):
    rc = _rc(tmp_path, 1)
    grid = _grid(rc, 1, {"dp-ledger": value})
    assert _train(grid, rc, 1).has_error()
    assert "node-config `dp-ledger` must be a non-empty path (a string)" in grid.client_errors[-1][1]


def test_two_partitions_sharing_one_ledger_do_not_mix(tmp_path):
    """Two SuperNodes (partitions 0 and 1, of different sizes) on one ledger, each with a bound between the epsilon
    of one run and of two on its partition: both train run 1, each entry holds its own partition's steps, and run 2
    is refused on each partition by the total of its own two runs (the number names no step of the other)."""
    ones = [_epsilon(tmp_path, 1, p) for p in (0, 1)]
    twos = [_epsilon(tmp_path, 2, p) for p in (0, 1)]
    ledger = str(tmp_path / "ledger.json")

    def grid_for(rc, run_id):
        grid = _grid(rc, run_id, {"dp-ledger": ledger}, nodes=2)
        for pid in (0, 1):
            grid.contexts[pid + 1].node_config["dp-max-epsilon"] = (ones[pid] + twos[pid]) / 2
        return grid

    rc1 = _rc(tmp_path, 1)
    grid = grid_for(rc1, 1)
    assert not _train(grid, rc1, 1, node=1).has_error() and not _train(grid, rc1, 1, node=2).has_error()
    entries = {e["partition_id"]: e for e in read_privacy_ledger(ledger)}
    assert sorted(entries) == [0, 1] and all(e["run_id"] == 1 for e in entries.values())
    for pid in (0, 1):
        assert json.loads(grid.contexts[pid + 1].state["privacy"]["accountant"])["history"] == entries[pid]["history"]
    assert entries[0]["history"][0][0] != entries[1]["history"][0][0]  # sampling rates of two partition sizes
    rc2 = _rc(tmp_path, 2)
    grid = grid_for(rc2, 2)
    for pid in (0, 1):
        assert _train(grid, rc2, 1, node=pid + 1).has_error()
        text = grid.client_errors[-1][1]
        assert f"partition-id {pid} across runs 1, 2 (this run: 2; 2 DP-SGD steps" in text
        assert f"to {twos[pid]:.4g} at delta 1e-05" in text


def test_a_restarted_node_keeps_counting_and_a_lost_node_state_is_refused(tmp_path):
    """Run 1 of two rounds with a SuperNode restart between them (fresh context.state: the accountant comes back from
    the work-dir): the ledger records its 2 steps, and run 2 is refused by the total of 3. A node whose work-dir was
    lost too, asked for round 1 of run 1 again, is refused by the ledger (it already records that run's steps)."""
    two, three = _epsilon(tmp_path, 2), _epsilon(tmp_path, 3)
    ledger = str(tmp_path / "ledger.json")
    node = {"dp-ledger": ledger, "dp-max-epsilon": (two + three) / 2}
    rc1 = _rc(tmp_path, 1, rounds=2)
    grid = _grid(rc1, 1, node)
    assert not _train(grid, rc1, 1).has_error()
    grid.contexts[1].state = RecordDict()  # the SuperNode restarts
    assert not _train(grid, rc1, 2).has_error()
    assert _ledger_steps(ledger) == {1: 2}
    rc2 = _rc(tmp_path, 2)
    grid2 = _grid(rc2, 2, node)
    assert _train(grid2, rc2, 1).has_error() and "across runs 1, 2" in grid2.client_errors[-1][1]
    # run 1's node state lost (context and work-dir): the ledger still counts its 2 steps
    import shutil

    shutil.rmtree(rc1["work-dir"])
    grid.contexts[1].state = RecordDict()
    before = open(ledger).read()
    assert _train(grid, rc1, 1).has_error()
    assert "records more DP-SGD for run 1, partition-id 0 (2 steps)" in grid.client_errors[-1][1]
    assert open(ledger).read() == before


def test_no_ledger_write_when_the_post_training_check_refuses(tmp_path, monkeypatch):
    """A round whose actual steps exceed the plan (the plan made 0 here) is checked again against the total after
    training, under the ledger's lock: it is not uploaded, and neither the ledger nor the node state records it."""
    one, two = _epsilon(tmp_path, 1), _epsilon(tmp_path, 2)
    ledger = str(tmp_path / "ledger.json")
    node = {"dp-ledger": ledger, "dp-max-epsilon": (one + two) / 2}
    rc1 = _rc(tmp_path, 1)
    assert not _train(_grid(rc1, 1, node), rc1, 1).has_error()
    before = open(ledger).read()
    monkeypatch.setattr(flower, "planned_round_steps", lambda *a: (0.05, 0))
    rc2 = _rc(tmp_path, 2)
    grid = _grid(rc2, 2, node)
    assert _train(grid, rc2, 1).has_error()
    assert "Round 1 ran 1 DP-SGD steps in this run and uploading its update" in grid.client_errors[-1][1]
    assert open(ledger).read() == before and "privacy" not in grid.contexts[1].state
    assert not os.path.exists(os.path.join(rc2["work-dir"], "hf_ext-node-state"))


def test_a_ledger_without_a_bound_records_and_a_run_without_dp_sgd_is_not_recorded(tmp_path):
    """`dp-ledger` alone records every DP-SGD run for the operator's audit (no refusal, no warning); a run without
    DP-SGD has no accountant and writes nothing."""
    import warnings

    ledger = str(tmp_path / "ledger.json")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dp-ledger")
        for run_id in (1, 2, 3):
            rc = _rc(tmp_path, run_id)
            assert not _train(_grid(rc, run_id, {"dp-ledger": ledger}), rc, 1).has_error()
    assert _ledger_steps(ledger) == {1: 1, 2: 1, 3: 1}
    other = str(tmp_path / "other.json")
    rc = {**_rc(tmp_path, 4), "dp-clip-norm": 0.0, "dp-noise-multiplier": 0.0}
    assert not _train(_grid(rc, 4, {"dp-ledger": other}), rc, 1).has_error()
    assert not os.path.exists(other)


def test_a_ledger_locked_by_another_node_is_refused(tmp_path, monkeypatch):
    from filelock import FileLock

    ledger = str(tmp_path / "ledger.json")
    monkeypatch.setattr(flower, "LEDGER_LOCK_TIMEOUT_S", 0.2)
    rc = _rc(tmp_path, 1)
    with FileLock(ledger + ".lock"):
        grid = _grid(rc, 1, {"dp-ledger": ledger})
        assert _train(grid, rc, 1).has_error()
    assert "Cannot lock this node's `dp-ledger`" in grid.client_errors[-1][1]
    assert not os.path.exists(ledger)
