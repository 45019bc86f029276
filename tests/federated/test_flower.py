"""The Flower ClientApp/ServerApp pair through an in-process Grid: same global adapter as the simulation."""

import pytest
import torch
from flwr.app import Context, RecordDict

from hf_ext.federated import FederatedArguments, FederatedSimulation, make_client_app, make_server_app

from .conftest import tiny_llama
from .flower_harness import InProcessGrid


def _run_flower(model_fn, datasets, fed, args, fail_nodes=()):
    out = {}
    client_app = make_client_app(model_fn, lambda i: datasets[i], fed, args)
    server_app = make_server_app(model_fn, fed, len(datasets), seed=args.seed, on_finish=lambda s, r: out.update(s))
    grid = InProcessGrid(client_app, len(datasets), fail_nodes=fail_nodes)
    server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
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


def test_flower_secure_aggregation_with_dropout(small_tokenizer, client_datasets, training_args):
    def model_fn():
        return tiny_llama(len(small_tokenizer))

    plain = FederatedArguments(num_rounds=1, local_steps=1)
    secure = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    ref = _run_flower(model_fn, client_datasets, plain, training_args, fail_nodes=[2])
    got = _run_flower(model_fn, client_datasets, secure, training_args, fail_nodes=[2])
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=0)
    b_keys = [k for k in ref if k.endswith("lora_B.default.weight")]
    assert any(ref[k].abs().max() > 0 for k in b_keys)  # the survivors did train
