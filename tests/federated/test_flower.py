"""The Flower ClientApp/ServerApp pair through an in-process Grid: same global adapter as the simulation."""

import pytest
import torch
from flwr.app import Context, RecordDict

from hf_ext.federated import FederatedArguments, FederatedSimulation, make_client_app, make_server_app

from .conftest import tiny_llama
from .flower_harness import InProcessGrid


def _run_flower(model_fn, datasets, fed, args, fail_nodes=(), grid_out=None):
    out = {}
    client_app = make_client_app(model_fn, lambda i: datasets[i], fed, args)
    server_app = make_server_app(model_fn, fed, len(datasets), seed=args.seed, on_finish=lambda s, r: out.update(s))
    grid = InProcessGrid(client_app, len(datasets), fail_nodes=fail_nodes)
    server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    if grid_out is not None:
        grid_out.append(grid)
    return out


@pytest.mark.parametrize("aggregation,rounds,clients", [("factors", 2, 2), ("merge_then_average", 1, 2)])
def test_flower_path_equals_in_process_path(
    small_tokenizer, client_datasets, training_args, aggregation, rounds, clients
):
    def model_fn():
        return tiny_llama(len(small_tokenizer))

    client_datasets = client_datasets[:clients]
    fed = FederatedArguments(num_rounds=rounds, local_steps=1, aggregation=aggregation)
    sim = FederatedSimulation(model_fn(), client_datasets, fed, training_args)
    start = {k: v.clone() for k, v in sim.global_state.items()}
    sim.run()
    flower_state = _run_flower(model_fn, client_datasets, fed, training_args)
    assert set(flower_state) == set(sim.global_state)
    assert any(not torch.equal(start[k], sim.global_state[k]) for k in start)
    for k, v in sim.global_state.items():
        torch.testing.assert_close(flower_state[k], v, atol=1e-7, rtol=0)


def test_flower_secaggplus_with_dropout_equals_plain_fedavg(small_tokenizer, client_datasets, training_args):
    """Flower's SecAgg+ (SecAggPlusWorkflow + secaggplus_mod) with one of 3 nodes dropped (threshold 2): the same
    global adapter as plain FedAvg over the survivors, up to SecAgg+'s quantization."""

    def model_fn():
        return tiny_llama(len(small_tokenizer))

    plain = FederatedArguments(num_rounds=1, local_steps=1)
    secure = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    ref = _run_flower(model_fn, client_datasets, plain, training_args, fail_nodes=[2])
    grids = []
    got = _run_flower(model_fn, client_datasets, secure, training_args, fail_nodes=[2], grid_out=grids)
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, atol=2e-5, rtol=0)
    b_keys = [k for k in ref if k.endswith("lora_B.default.weight")]
    assert any(ref[k].abs().max() > 0 for k in b_keys)  # the survivors did train
    # the server's view: no reply carries a plain adapter, only SecAgg+ masked vectors
    masked = [m for m in grids[0].received if not m.has_error() and "secaggplus" in str(list(m.content.keys()))]
    assert masked and all(len(m.content.array_records[k]) == 0 for m in masked for k in m.content.array_records)


def test_flower_secaggplus_server_view_reveals_no_update(small_tokenizer, client_datasets, training_args):
    """What the server receives in stage 2 of SecAgg+ is uncorrelated with the client's actual update."""
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    from hf_ext.federated import prepare_upload, train_client
    from hf_ext.federated.flower import initial_global_state

    def model_fn():
        return tiny_llama(len(small_tokenizer))

    secure = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    grids = []
    _run_flower(model_fn, client_datasets[:2], secure, training_args, grid_out=grids)
    uploads = {}
    for m in grids[0].received:
        cfg = m.content.config_records.get(RECORD_KEY_CONFIGS)
        if cfg is not None and Key.MASKED_PARAMETERS in cfg:
            arrays = [bytes_to_ndarray(b) for b in cfg[Key.MASKED_PARAMETERS]]
            uploads[m.metadata.src_node_id] = torch.cat([torch.as_tensor(a).double().flatten() for a in arrays[1:]])
    assert set(uploads) == {1, 2}
    start = initial_global_state(model_fn, secure, training_args.seed)
    from hf_ext.federated import apply_lora

    model = apply_lora(model_fn(), secure, seed=training_args.seed)
    state, n, _ = train_client(model, start, client_datasets[0], training_args, secure, 0, 1)
    update = prepare_upload(start, state, secure)
    true = torch.cat([update[k].double().flatten() for k in sorted(update)])
    assert float(true.abs().max()) > 0
    masked = uploads[1]
    assert masked.shape == true.shape
    assert true.numel() >= 1000  # enough entries for a chance-level bound well below 1
    assert abs(float(torch.corrcoef(torch.stack([masked, true]))[0, 1])) < 5 / true.numel() ** 0.5  # chance level


def test_run_config_apps_equal_in_process_simulation(tmp_path):
    """The Flower App's ServerApp/ClientApp (built from the run config, SecAgg+ and DP-SGD on) through an
    in-process grid: the saved global adapter equals the simulation of the same task up to SecAgg+ quantization."""
    from safetensors.torch import load_file

    from hf_ext.federated.flower_task import run_config_client_app, run_config_server_app, task_from_run_config

    out = tmp_path / "global.safetensors"
    run_config = {
        "num-server-rounds": 1,
        "local-steps": 1,
        "dp-clip-norm": 1.0,
        "dp-noise-multiplier": 0.5,
        "dp-noise-seed": 0,  # reproducible DP noise (opt-in, test only) so that both paths draw the same noise
        "output-path": str(out),
        "work-dir": str(tmp_path / "work"),
    }
    # the nodes opt into the server-chosen noise seed (refused by default: the server could subtract the noise)
    grid = InProcessGrid(
        run_config_client_app(), 2, run_config=run_config, node_config={"dp-allow-server-noise-seed": True}
    )
    run_config_server_app()(
        grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    )
    deployed = load_file(str(out))
    task = task_from_run_config(run_config)
    assert task.fed_args.secure_aggregation and task.training_args.dp_clip_norm == 1.0
    sim = FederatedSimulation(
        task.model_fn(), [task.dataset_fn(i) for i in range(2)], task.fed_args, task.training_args
    )
    start = {k: v.clone() for k, v in sim.global_state.items()}
    sim.run()
    assert max(float((sim.global_state[k] - start[k]).abs().max()) for k in start) > 1e-3
    for k, v in sim.global_state.items():
        torch.testing.assert_close(deployed[k], v, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="Unknown run-config"):
        task_from_run_config({"num-rounds": 2})
    with pytest.raises(ValueError, match="dp-clip-norm"):
        task_from_run_config({"dp-noise-multiplier": 1.0})


def test_example_app_declares_every_run_config_key_with_our_defaults():
    """`flwr run ... --run-config` refuses keys the app's pyproject does not declare ("Invalid run configuration"),
    so every key `parse_run_config` reads must be declared there, with the same type. A key missing from the example
    (e.g. `dp-noise-seed`) makes the documented deployment fail before any round."""
    import tomllib
    from pathlib import Path

    from hf_ext.federated.flower_task import RUN_CONFIG_DEFAULTS, parse_run_config

    pyproject = Path(__file__).resolve().parents[2] / "examples" / "flower_app" / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    assert set(declared) == set(RUN_CONFIG_DEFAULTS)
    parse_run_config(declared)  # every declared value has the type the task reads
    assert declared["dp-noise-seed"] == RUN_CONFIG_DEFAULTS["dp-noise-seed"][1] == -1  # secret noise by default


def test_flower_secaggplus_in_merge_then_average_mode_equals_plain_fedavg(
    small_tokenizer, client_datasets, training_args
):
    """SecAgg+ clients in merge_then_average mode upload their dense B @ A updates (not the exchanged tensors); the
    server reads the mean under those names. Before, every client failed with a KeyError after training."""

    def model_fn():
        return tiny_llama(len(small_tokenizer))

    plain = FederatedArguments(num_rounds=1, local_steps=1, aggregation="merge_then_average")
    secure = FederatedArguments(num_rounds=1, local_steps=1, aggregation="merge_then_average", secure_aggregation=True)
    ref = _run_flower(model_fn, client_datasets[:2], plain, training_args)
    got = _run_flower(model_fn, client_datasets[:2], secure, training_args)
    start = FederatedSimulation(model_fn(), client_datasets[:2], plain, training_args).global_state
    assert set(got) == set(ref)
    assert max(float((ref[k] - start[k]).abs().max()) for k in ref) > 1e-4  # the base weights moved
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, atol=2e-5, rtol=0)


def test_under_client_level_dp_replies_carry_weight_one_not_the_example_count(
    small_tokenizer, client_datasets, training_args
):
    """docs/federated.md: a reply's `num-examples` is the aggregation weight, 1 under client-level DP (uniform
    DP-FedAvg), so the server sees no example count in the clear; without it, the count."""

    def model_fn():
        return tiny_llama(len(small_tokenizer))

    counts = {}
    for name, fed in [
        ("plain", FederatedArguments(num_rounds=1, local_steps=1)),
        ("client_dp", FederatedArguments(num_rounds=1, local_steps=1, client_dp_clip_norm=1.0,
                                         client_dp_noise_multiplier=0.5, client_dp_noise_seed=0)),
    ]:  # fmt: skip
        grids = []
        _run_flower(model_fn, client_datasets[:2], fed, training_args, grid_out=grids)
        metrics = [m.content["metrics"] for m in grids[0].received if not m.has_error()]
        counts[name] = [int(m["num-examples"]) for m in sorted(metrics, key=lambda m: int(m["partition-id"]))]
    assert counts["plain"] == [len(d) for d in client_datasets[:2]] and max(counts["plain"]) > 1
    assert counts["client_dp"] == [1, 1]
