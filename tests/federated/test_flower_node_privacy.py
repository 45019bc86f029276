"""The Flower App's nodes protect themselves from the server's run config (audit fd14, finding A): the server side
writes the run config, so it chooses the DP-SGD noise, its seed and secure aggregation. A node refuses a server-chosen
`dp-noise-seed` unless its node config opts in, and enforces its own node-config floors (`dp-min-noise-multiplier`,
`dp-max-epsilon` at `dp-max-delta`) and `secagg-required`, naming the run-config key and the node-config key."""

import math

import pytest
from flwr.app import Context, RecordDict

from hf_ext.federated.flower_task import (
    check_node_config,
    planned_epsilon,
    run_config_client_app,
    run_config_server_app,
    task_from_run_config,
)

from .flower_harness import InProcessGrid

NODE = {"partition-id": 0, "num-partitions": 2}


def _task(tmp_path, **run_config):
    return task_from_run_config({"work-dir": str(tmp_path / "work"), **run_config})


def test_the_app_refuses_a_server_chosen_noise_seed_before_training(tmp_path):
    """Through the ServerApp and ClientApp: `dp-noise-seed=0` in the run config (the server could regenerate every
    node's noise) fails the round on every node, naming both keys, and nothing is written."""
    from hf_ext.federated.flower import RoundFailedError

    out = tmp_path / "global.safetensors"
    rc = {
        "num-server-rounds": 1, "local-steps": 1, "secure-aggregation": False, "dp-clip-norm": 1.0,
        "dp-noise-multiplier": 1.0, "dp-noise-seed": 0, "output-path": str(out), "work-dir": str(tmp_path / "w"),
    }  # fmt: skip
    grid = InProcessGrid(run_config_client_app(), 2, run_config=rc, errors_as_replies=True)
    with pytest.raises(RoundFailedError):
        run_config_server_app()(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    assert len(grid.client_errors) == 2 and not out.exists()
    for _, text in grid.client_errors:
        assert "dp-noise-seed=0" in text and "dp-allow-server-noise-seed=true" in text


def test_default_node_config_accepts_the_documented_run_config(tmp_path):
    task = _task(tmp_path, **{"dp-clip-norm": 1.0, "dp-noise-multiplier": 0.5})  # the example app's DP settings
    check_node_config(NODE, task)
    check_node_config({}, _task(tmp_path))  # the defaults: secret noise, SecAgg+ on, DP-SGD off


def test_a_node_opts_into_a_server_chosen_noise_seed(tmp_path):
    task = _task(tmp_path, **{"dp-clip-norm": 1.0, "dp-noise-multiplier": 0.5, "dp-noise-seed": 3})
    with pytest.raises(ValueError, match="dp-noise-seed=3.*dp-allow-server-noise-seed=true"):
        check_node_config(NODE, task)
    with pytest.raises(ValueError, match="dp-allow-server-noise-seed"):  # a string is not an opt-in
        check_node_config({**NODE, "dp-allow-server-noise-seed": "true"}, task)
    check_node_config({**NODE, "dp-allow-server-noise-seed": True}, task)


def test_secagg_required_refuses_a_run_that_uploads_in_the_clear(tmp_path):
    node = {**NODE, "secagg-required": True}
    with pytest.raises(ValueError, match="secure-aggregation=false.*secagg-required=true"):
        check_node_config(node, _task(tmp_path, **{"secure-aggregation": False}))
    check_node_config(node, _task(tmp_path, **{"secure-aggregation": True}))


def test_minimum_noise_multiplier_and_dp_required(tmp_path):
    node = {**NODE, "dp-min-noise-multiplier": 1.0}
    with pytest.raises(ValueError, match="dp-noise-multiplier=0.5.*dp-min-noise-multiplier=1.0"):
        check_node_config(node, _task(tmp_path, **{"dp-clip-norm": 1.0, "dp-noise-multiplier": 0.5}))
    with pytest.raises(ValueError, match="dp-clip-norm=0.0.*dp-min-noise-multiplier"):  # DP-SGD off
        check_node_config(node, _task(tmp_path))
    check_node_config(node, _task(tmp_path, **{"dp-clip-norm": 1.0, "dp-noise-multiplier": 1.0}))
    with pytest.raises(ValueError, match="dp-min-noise-multiplier"):
        check_node_config({**NODE, "dp-min-noise-multiplier": math.inf}, _task(tmp_path))


def test_maximum_epsilon_is_the_runs_epsilon_on_this_node(tmp_path):
    """The bound is checked against the epsilon the run config would make the node spend, which is what its
    accountant reports after training (here one round, trained as the ClientApp does)."""
    from hf_ext.federated.flower import initial_global_state
    from hf_ext.federated.simulation import apply_lora, train_client

    rc = {"num-server-rounds": 1, "local-steps": 2, "dp-clip-norm": 1.0, "dp-noise-multiplier": 1.0,
          "secure-aggregation": False}  # fmt: skip
    task = _task(tmp_path, **rc)
    eps = planned_epsilon(task, 0, 1e-5)
    model = apply_lora(task.model_fn(), task.fed_args, seed=task.training_args.seed)
    state = initial_global_state(task.model_fn, task.fed_args, task.seed)
    _, _, metrics = train_client(model, state, task.dataset_fn(0), task.training_args, task.fed_args, 0, 1)
    assert metrics["dp_epsilon"] == pytest.approx(eps, rel=1e-9)
    check_node_config({**NODE, "dp-max-epsilon": eps * 1.01}, task)
    with pytest.raises(ValueError, match=r"epsilon [0-9.]+ at delta 1e-05 .*dp-noise-multiplier.*dp-max-epsilon="):
        check_node_config({**NODE, "dp-max-epsilon": eps * 0.99}, task)
    # more rounds spend more: the same node refuses the longer run
    with pytest.raises(ValueError, match="num-server-rounds=3"):
        check_node_config({**NODE, "dp-max-epsilon": eps * 1.01}, _task(tmp_path, **{**rc, "num-server-rounds": 3}))
    with pytest.raises(ValueError, match="dp-clip-norm=0.0.*dp-max-epsilon"):
        check_node_config({**NODE, "dp-max-epsilon": 10.0}, _task(tmp_path))


def test_maximum_delta(tmp_path):
    task = _task(tmp_path, **{"dp-clip-norm": 1.0, "dp-noise-multiplier": 1.0, "dp-delta": 1e-3})
    with pytest.raises(ValueError, match="dp-delta=0.001.*dp-max-delta=1e-05"):
        check_node_config({**NODE, "dp-max-delta": 1e-5}, task)
    with pytest.raises(ValueError, match="dp-max-delta"):
        check_node_config({**NODE, "dp-max-delta": 1.5}, task)
    check_node_config({**NODE, "dp-max-delta": 1e-2}, task)
