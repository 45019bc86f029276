"""Failure handling of the Flower App (run_config_server_app / run_config_client_app) through the in-process grid of
flower_harness: failed, missing or halted rounds, duplicate partition ids, node-config mismatches, reply timeouts,
SecAgg+ precision, the result files, a missing flwr, and the deployment test's process stopping."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from hf_ext.federated import FederatedArguments
from hf_ext.federated.flower_task import run_config_client_app, run_config_server_app, task_from_run_config

from .flower_harness import InProcessGrid


class SilentNodeGrid(InProcessGrid):
    """An in-process grid on which the nodes in `silent` never answer (a SuperNode killed mid-run) and which
    records the reply timeout the server passes to every exchange."""

    def __init__(self, *args, silent=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.silent = set(silent)
        self.timeouts = []

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        messages = [m for m in messages if m.metadata.dst_node_id not in self.silent]
        return super().send_and_receive(messages, timeout=timeout)


def _run(tmp_path, extra=None, nodes=2, pids=None, node_partitions=None, grid_cls=InProcessGrid, **grid_kwargs):
    """Run the App for `nodes` in-process nodes; returns (grid, output path). Raises what the ServerApp raises."""
    out = tmp_path / "global.safetensors"
    rc = {
        "num-server-rounds": 1,
        "local-steps": 1,
        "secure-aggregation": False,
        "dp-clip-norm": 0.0,
        **(extra or {}),
        "output-path": str(out),
        "work-dir": str(tmp_path / "work"),
    }
    grid = grid_cls(run_config_client_app(), nodes, run_config=rc, errors_as_replies=True, **grid_kwargs)
    for n, p in zip(grid.node_ids, pids or []):
        grid.contexts[n].node_config["partition-id"] = p
    for n, p in zip(grid.node_ids, node_partitions or []):
        grid.contexts[n].node_config["num-partitions"] = p
    run_config_server_app()(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    return grid, out


def _assert_round_failed(excinfo, out):
    assert type(excinfo.value).__name__ == "RoundFailedError"
    assert not out.exists() and not os.path.exists(str(out) + ".json")  # no partial or stale result
    assert "Nothing was written to output-path" in str(excinfo.value)


def test_secagg_halted_rounds_fail_the_run_and_write_nothing(tmp_path):
    """D1: clients refusing a too-small clipping range halt SecAgg+; the run used to finish and write the initial
    adapter as the result. Now round 1 fails with the clients' reasons, round 2 is never started."""
    out = tmp_path / "global.safetensors"
    with pytest.raises(RuntimeError, match="Round 1 failed: secure aggregation halted") as excinfo:
        _run(tmp_path, {"secure-aggregation": True, "secagg-clipping-range": 1e-4, "num-server-rounds": 2})
    _assert_round_failed(excinfo, out)
    msg = str(excinfo.value)
    for node in (1, 2):
        assert f"node {node} failed in the SecAgg+ collect-masked-vectors stage (training): The weighted update" in msg
    assert "secagg-clipping-range" in msg


@pytest.mark.parametrize("pids", [[5, 6], [0, 7]])
def test_plain_round_with_failed_clients_fails_the_run(tmp_path, pids):
    """D1 without SecAgg: all clients failing used to write a file with 0 tensors, one of two failing a FedAvg of
    the survivor presented as the result."""
    out = tmp_path / "global.safetensors"
    with pytest.raises(RuntimeError, match="Round 1 failed: aggregated the updates of") as excinfo:
        _run(tmp_path, pids=pids)
    _assert_round_failed(excinfo, out)
    msg = str(excinfo.value)
    assert f"node 2 failed in the train message: partition-id {pids[1]} is outside [0, 2)" in msg
    assert "where all 2 clients (num-partitions) were required" in msg


def test_accept_partial_rounds_opt_in_records_the_client_counts(tmp_path):
    """The opt-in `accept-partial-rounds=true` accepts a round with the survivor only and says so in the metadata."""
    _, out = _run(tmp_path, {"accept-partial-rounds": True}, pids=[0, 7])
    meta = json.loads(open(str(out) + ".json").read())
    assert meta["rounds"][0]["num_clients"] == 1 and meta["rounds"][0]["partition_ids"] == [0]
    assert meta["all_rounds_complete"] is False and meta["expected_clients_per_round"] == 2


@pytest.mark.parametrize("secure", [False, True])
def test_duplicate_partition_ids_are_refused(tmp_path, secure):
    """D4: two nodes with partition-id 0 used to complete silently (partition 0 counted twice, 1 never trained)."""
    out = tmp_path / "global.safetensors"
    with pytest.raises(RuntimeError, match=r"partition ids \[0\] were reported by more than one node") as excinfo:
        _run(tmp_path, {"secure-aggregation": secure}, pids=[0, 0])
    _assert_round_failed(excinfo, out)
    assert "partition-id 0 from nodes [1, 2]" in str(excinfo.value)


def test_node_config_num_partitions_must_match_the_run_config(tmp_path):
    """D4: the node-config `num-partitions` the docs ask for used to be ignored."""
    out = tmp_path / "global.safetensors"
    with pytest.raises(RuntimeError, match="node 2 failed") as excinfo:
        _run(tmp_path, node_partitions=[2, 3])
    _assert_round_failed(excinfo, out)
    assert "node config says num-partitions=3 but the run config says num-partitions=2" in str(excinfo.value)


def test_secagg_with_one_partition_names_the_run_config_keys():
    """D4: the message was '--secure_aggregation_max_colluders 0 is too large for 1 clients ... at most 0'."""
    with pytest.raises(ValueError) as excinfo:
        task_from_run_config({"num-partitions": 1, "secure-aggregation": True})
    msg = str(excinfo.value)
    assert "num-partitions" in msg and "secure-aggregation=false" in msg
    assert "--secure_aggregation" not in msg and "at most 0" not in msg
    with pytest.raises(ValueError, match=r"`secagg-max-colluders` to a value in \[0, 2\]"):
        task_from_run_config({"num-partitions": 3, "secagg-max-colluders": 3})


@pytest.mark.parametrize(
    "key,value",
    [
        ("local-steps", 0),  # fl9 #5: <= 0 trained one epoch per round silently (the App has no epoch key)
        ("local-steps", -5),
        ("dp-clip-norm", -1.0),  # with dp-noise-multiplier 0 it turned DP-SGD off silently
        ("learning-rate", float("nan")),
        ("learning-rate", -1.0),
        ("batch-size", 0),
        ("docs-per-client", 0),
        ("block-size", 1),  # a block of 1 token has no next-token target
        ("dp-delta", 1.0),  # (0, 1): delta 1 promises nothing
        ("secagg-max-weight", float("inf")),
        ("dp-noise-multiplier", float("nan")),
        ("dp-noise-seed", -5),
        ("hidden-size", 30),
        ("num-server-rounds", 0),
        ("round-timeout", float("inf")),
    ],
)
def test_numeric_run_config_values_out_of_range_are_refused_naming_the_key(key, value):
    """fl9 #5: numeric run-config values outside their range were accepted when the task was built and then trained
    something else than asked or failed later inside the clients; they are refused up front, naming the key."""
    with pytest.raises(ValueError, match=f"run-config `{key}` must be"):
        task_from_run_config({key: value})


def _bad_paths(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "meta.safetensors.json").mkdir()
    return folder, afile


@pytest.mark.parametrize(
    "case,match",
    [
        ("folder", r"`output-path`='[^']*out' is a folder.*Set `output-path` to a file path.*out/global.safetensors"),
        ("under a file", r"`output-path`='[^']*afile/global.safetensors' cannot be written: '[^']*afile' is a file"),
        ("deep under a file", r"`output-path`=.* cannot be written: '[^']*afile' is a file, not a folder\. Set"),
        ("json is a folder", r"`output-path`=.*'[^']*meta.safetensors.json', where the run's metadata goes, is a"),
        ("trailing slash", r"`output-path`='[^']*new/' is a folder"),
    ],
    ids=["folder", "under-a-file", "deep-under-a-file", "json-is-a-folder", "trailing-slash"],
)
def test_unusable_output_path_is_refused_naming_the_key(tmp_path, case, match):
    """rs23 F2: `output-path` was not checked: an existing folder, or a path under a file, failed only at the final
    save, after every round, with a raw IsADirectoryError / FileExistsError, and the trained adapter was lost."""
    from hf_ext.federated.flower_task import check_output_path

    folder, afile = _bad_paths(tmp_path)
    path = {
        "folder": str(folder),
        "under a file": str(afile / "global.safetensors"),
        "deep under a file": str(afile / "a" / "b" / "global.safetensors"),
        "json is a folder": str(tmp_path / "meta.safetensors"),
        "trailing slash": str(tmp_path / "new") + "/",
    }[case]
    with pytest.raises(ValueError, match=match):
        check_output_path(path)
    assert not (tmp_path / "new").exists()
    # usable paths pass and nothing is created before the run finishes
    check_output_path("")
    check_output_path(str(afile))  # an old result file is replaced
    check_output_path(str(tmp_path / "x" / "y" / "global.safetensors"))
    assert not (tmp_path / "x").exists()


def test_work_dir_that_is_a_file_is_refused_naming_the_key(tmp_path):
    """rs23 F2: a `work-dir` that is a file was accepted when the task was built."""
    from hf_ext.federated.flower_task import check_work_dir

    _, afile = _bad_paths(tmp_path)
    with pytest.raises(
        ValueError, match=r"run-config `work-dir`='[^']*afile' is a file, not a folder\. Set `work-dir`"
    ):
        check_work_dir(str(afile))
    with pytest.raises(ValueError, match=r"run-config `work-dir`='[^']*afile/w' is not writable .*choose a folder"):
        check_work_dir(str(afile / "w"))
    check_work_dir(str(tmp_path / "w" / "v"))
    assert (tmp_path / "w" / "v").is_dir()


def test_server_app_refuses_a_bad_output_path_before_the_first_round(tmp_path):
    """rs23 F2: the ServerApp checks `output-path` before it sends any message (it used to train every round first)."""
    folder, _ = _bad_paths(tmp_path)
    rc = {"num-server-rounds": 1, "local-steps": 1, "secure-aggregation": False, "output-path": str(folder)}
    grid = SilentNodeGrid(run_config_client_app(), 2, run_config=rc, errors_as_replies=True)
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
    with pytest.raises(ValueError, match=r"run-config `output-path`='[^']*out' is a folder"):
        run_config_server_app()(grid, ctx)
    assert grid.timeouts == [] and grid.received == []  # no exchange was started
    assert list(folder.iterdir()) == []


def test_client_app_refuses_a_work_dir_that_is_a_file_before_training(tmp_path):
    """rs23 F2: each node checks its (node-local) `work-dir` before it trains; the round fails naming the key."""
    (tmp_path / "work").write_text("x")
    out = tmp_path / "global.safetensors"
    with pytest.raises(RuntimeError, match="Round 1 failed") as excinfo:
        _run(tmp_path)
    _assert_round_failed(excinfo, out)
    assert "node 1 failed in the train message: run-config `work-dir`=" in str(excinfo.value)
    assert "is a file, not a folder. Set `work-dir` to a folder" in str(excinfo.value)


@pytest.mark.parametrize("case", ["folder", "under a file"])
def test_a_failed_final_save_keeps_the_trained_adapter(tmp_path, case):
    """rs23 F2: if `output-path` cannot be written at the end (it changed during the run), the trained state is saved
    under the server's work-dir and the error names `output-path` and that file (was a raw OSError, state lost)."""
    from safetensors.torch import load_file

    from hf_ext.federated.flower_task import save_result

    folder, afile = _bad_paths(tmp_path)
    path = str(folder) if case == "folder" else str(afile / "global.safetensors")
    state = {"w": torch.arange(3.0)}
    with pytest.raises(RuntimeError, match=r"run-config `output-path`=.* could not be written") as excinfo:
        save_result(state, path, {"run": 1}, str(tmp_path / "work"))
    (rescued,) = (tmp_path / "work").glob("hf_ext_flower_result-*/global.safetensors")
    assert repr(str(rescued)) in str(excinfo.value) and "Set `output-path` to a file path" in str(excinfo.value)
    assert torch.equal(load_file(str(rescued))["w"], state["w"])
    meta = json.loads(open(str(rescued) + ".json").read())
    assert meta["run"] == 1 and meta["weights_sha256"] == hashlib.sha256(rescued.read_bytes()).hexdigest()
    save_result(state, str(tmp_path / "ok.safetensors"), {"run": 2}, str(tmp_path / "work"))
    assert load_file(str(tmp_path / "ok.safetensors"))["w"].tolist() == [0.0, 1.0, 2.0]


def test_every_numeric_run_config_key_has_a_range():
    from hf_ext.federated.flower_task import RUN_CONFIG_DEFAULTS, RUN_CONFIG_RANGES, check_run_config, parse_run_config

    assert set(RUN_CONFIG_RANGES) == {k for k, (typ, _) in RUN_CONFIG_DEFAULTS.items() if typ in (int, float)}
    check_run_config(parse_run_config({}))  # the defaults are in range
    with pytest.raises(TypeError, match="run-config `local-steps` must be int"):  # fractional counts: by type
        task_from_run_config({"local-steps": 2.5})


@pytest.mark.parametrize("secure", [False, True])
def test_round_timeout_reaches_flower_and_a_silent_node_fails_the_round(tmp_path, secure):
    """D2: the run config's `round-timeout` is the timeout of every exchange (Flower's FedAvg.start / SecAggPlusWorkflow
    timeout; was 24 h per round, and None with SecAgg+); a node that never replies fails the round, naming it."""
    out = tmp_path / "global.safetensors"
    with pytest.raises(RuntimeError, match="Round 1 failed") as excinfo:
        grid_box = {}

        class Grid(SilentNodeGrid):
            def __init__(self, *a, **k):
                super().__init__(*a, silent=[2], **k)
                grid_box["grid"] = self

        _run(tmp_path, {"secure-aggregation": secure, "round-timeout": 5.0, "num-server-rounds": 2}, grid_cls=Grid)
    _assert_round_failed(excinfo, out)
    assert grid_box["grid"].timeouts and set(grid_box["grid"].timeouts) == {5.0}
    assert "node 2 sent no reply" in str(excinfo.value) and "within the 5 s timeout" in str(excinfo.value)
    assert task_from_run_config({}).config["round-timeout"] == 600.0
    with pytest.raises(ValueError, match="round-timeout"):
        task_from_run_config({"round-timeout": 0.0})


def _flower_quantization_error(update, n, max_weight, clip, rng):
    """The relative L2 error of Flower 1.42's client-side scaling + quantization of one upload (its own functions)."""
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    q = 2**22
    ratio = n / max_weight
    dq_ratio = round(ratio * q) / q
    np.random.seed(int(rng.integers(2**31)))
    quantized = quantize([dq_ratio * update], clip, q)
    back = dequantize(quantized, clip, q)[0] / dq_ratio
    return float(np.linalg.norm(back - update) / np.linalg.norm(update))


def test_secagg_precision_check_bounds_flowers_quantization_error():
    """D5: the client's expected-error bound is above Flower's measured error and within a small factor of it;
    max_weight far above the example count is refused naming `secagg-max-weight`."""
    from hf_ext.federated.flower import (
        SECAGG_MAX_RELATIVE_ERROR,
        SECAGG_WARN_RELATIVE_ERROR,
        check_secagg_range,
        secagg_quantization_error,
    )

    rng = np.random.default_rng(0)
    update = rng.normal(0, 5e-3, 5000)
    for max_weight in (1e3, 1e4, 1e5, 1e6):
        fed = FederatedArguments(secure_aggregation=True, secagg_max_weight=max_weight)
        bound = secagg_quantization_error({"w": torch.from_numpy(update)}, 300, fed)
        measured = _flower_quantization_error(update, 300, max_weight, fed.secagg_clipping_range, rng)
        assert measured <= bound <= 3 * measured, (max_weight, measured, bound)
        if bound > SECAGG_MAX_RELATIVE_ERROR:
            with pytest.raises(ValueError, match="secagg-max-weight"):
                check_secagg_range({"w": torch.from_numpy(update)}, 300, fed)
            with pytest.warns(UserWarning, match="expected relative error"):
                check_secagg_range({"w": torch.from_numpy(update)}, 300, fed, refuse_imprecise=False)
        elif bound > SECAGG_WARN_RELATIVE_ERROR:  # a loud warning, not a failed run (a small update is not lost)
            with pytest.warns(UserWarning, match="expected relative error"):
                check_secagg_range({"w": torch.from_numpy(update)}, 300, fed)
        else:
            check_secagg_range({"w": torch.from_numpy(update)}, 300, fed)
    assert secagg_quantization_error({"w": torch.from_numpy(update)}, 300, fed) > 0.5  # max_weight 1e6 refused


def test_secagg_max_weight_far_above_the_example_counts_fails_the_run(tmp_path):
    """D5 through the App: `secagg-max-weight=1e6` (relative error 1.12 in the audit: the update is lost) is refused
    by the clients."""
    out = tmp_path / "global.safetensors"
    with pytest.raises(RuntimeError, match="Round 1 failed") as excinfo:
        _run(tmp_path, {"secure-aggregation": True, "secagg-max-weight": 1e6})
    _assert_round_failed(excinfo, out)
    assert "expected relative error" in str(excinfo.value) and "secagg-max-weight" in str(excinfo.value)


def test_a_small_update_with_secagg_warns_but_runs(tmp_path):
    """A first version of the precision check refused from a 1e-2 relative error and failed valid runs whose updates
    are merely small (the example app with a lower learning rate: bound 0.02-0.08 per client). Such a run warns and
    writes its result."""
    with pytest.warns(UserWarning, match="expected relative error"):
        _, out = _run(tmp_path, {"secure-aggregation": True, "learning-rate": 2e-4})
    assert out.exists() and json.loads(open(str(out) + ".json").read())["all_rounds_complete"] is True


def test_result_metadata_is_structured_json_describing_the_weights(tmp_path):
    """The `.json` next to the weights used to be `str(result)`; now rounds, clients, epsilon (float) and the
    SecAgg+ settings, and the SHA-256 of the weights file it describes."""
    _, out = _run(
        tmp_path,
        {"dp-clip-norm": 1.0, "dp-noise-multiplier": 0.5, "dp-noise-seed": 0},
        node_config={"dp-allow-server-noise-seed": True},  # the nodes opt into the server-chosen noise seed
    )
    meta = json.loads(open(str(out) + ".json").read())
    assert meta["weights_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert meta["num_rounds"] == 1 and meta["all_rounds_complete"] is True
    assert meta["rounds"][0]["round"] == 1 and meta["rounds"][0]["partition_ids"] == [0, 1]
    assert isinstance(meta["dp_epsilon_max"], float) and meta["dp_epsilon_max"] > 0
    assert meta["dp_epsilon_max"] == meta["rounds"][0]["metrics"]["dp_epsilon_max"]
    assert meta["secure_aggregation"] == {"enabled": False} and meta["run_config"]["dp-clip-norm"] == 1.0

    from hf_ext.federated.flower_task import result_metadata

    secagg = result_metadata(task_from_run_config({}), [])["secure_aggregation"]
    assert secagg["enabled"] and secagg["threshold"] == 2 and secagg["max_weight"] == 1000.0
    assert secagg["clipping_range"] == 8.0 and secagg["quantization_range"] == 2**22


def test_save_global_state_writes_the_weights_first_and_the_json_last(tmp_path, monkeypatch):
    """A present `.json` always describes the weights next to it: the old json goes first, the json is written last."""
    from hf_ext.federated import flower_task

    path = str(tmp_path / "g.safetensors")
    flower_task.save_global_state({"a": torch.zeros(2)}, path, {"run": 1})
    events = []
    real_replace, real_remove = os.replace, os.remove
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))), real_replace(a, b))
    )
    monkeypatch.setattr(os, "remove", lambda a: (events.append(("remove", os.path.basename(a))), real_remove(a)))
    flower_task.save_global_state({"a": torch.ones(2)}, path, {"run": 2})
    assert events == [
        ("remove", "g.safetensors.json"),
        ("replace", "g.safetensors"),
        ("replace", "g.safetensors.json"),
    ]
    assert json.loads(open(path + ".json").read())["run"] == 2


def test_missing_flwr_names_the_extra(monkeypatch):
    """Without flwr the Flower module says which extra to install (was a bare ModuleNotFoundError)."""
    import importlib

    monkeypatch.setitem(sys.modules, "flwr.app", None)
    monkeypatch.delitem(sys.modules, "hf_ext.federated.flower")
    with pytest.raises(ModuleNotFoundError, match=r"hf_ext\[flower\]"):
        importlib.import_module("hf_ext.federated.flower")


def test_deployment_stop_kills_descendants_in_other_process_groups(tmp_path):
    """D3: the SuperLink starts flwr-serverapp in a process group of its own; `_stop` used to kill only the
    SuperLink's group and left it orphaned. A parent (own session) whose child starts its own session stands in."""
    from .test_flower_deployment import _alive, _stop

    pidfile = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    grandchild = None
    try:
        deadline = time.time() + 20
        while not (pidfile.exists() and pidfile.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        grandchild = int(pidfile.read_text())
        assert os.getpgid(grandchild) != os.getpgid(parent.pid)
        _stop([parent])
        deadline = time.time() + 5
        while _alive(grandchild) and time.time() < deadline:
            time.sleep(0.05)
        assert parent.poll() is not None and not _alive(grandchild)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if grandchild is not None and _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


@pytest.mark.parametrize("rates", ["0.01,0.02", "0.01,0.02,0.03,0.04"])
def test_flower_apps_refuse_client_learning_rates_not_one_per_client(tmp_path, rates):
    """As the simulation does: before, the client of partition 2 failed with a bare IndexError (and with the default
    min_round_clients the run finished without it), and a fourth rate was ignored."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.federated import PrivateTrainingArguments, make_client_app, make_server_app
    from hf_ext.federated.flower import _local_round

    def model_fn():
        return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2))  # fmt: skip

    fed = FederatedArguments(num_rounds=1, local_steps=1, client_learning_rates=rates)
    with pytest.raises(ValueError, match="client_learning_rates has .* values for 3 clients"):
        make_server_app(model_fn, fed, 3)
    args = PrivateTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    make_client_app(model_fn, lambda i: None, fed, args)  # built before the run knows the federation size
    context = Context(run_id=1, node_id=3, node_config={"partition-id": 2, "num-partitions": 3}, state=RecordDict(),
                      run_config={})  # fmt: skip
    with pytest.raises(ValueError, match="client_learning_rates has .* values for 3 clients"):
        _local_round(model_fn, lambda i: None, fed, args, None, None, context, {}, 1)
    if rates.count(",") == 1:  # a node config without num-partitions: the partition id itself is checked
        context = Context(run_id=1, node_id=3, node_config={"partition-id": 2}, state=RecordDict(), run_config={})
        with pytest.raises(ValueError, match="this node trains partition 2"):
            _local_round(model_fn, lambda i: None, fed, args, None, None, context, {}, 1)
