"""The SecAgg+ client refuses a global state with another number of arrays than its own adapter exchanges (a server
with a different LoRA configuration): pairing the arrays by position would silently drop or misassign tensors."""

import numpy as np
import pytest
from flwr.app import Context, RecordDict

import hf_ext.federated.flower as flower_mod
from hf_ext.federated import FederatedArguments
from hf_ext.federated.flower import ROUND_KEY, initial_global_state

from .conftest import tiny_llama


def _secagg_numpy_client(monkeypatch, model_fn, client_datasets, training_args, fed):
    built = {}

    class _Capture:  # stands in for Flower's ClientApp to reach the client the app would build per message
        def __init__(self, client_fn=None, mods=None):
            built["client_fn"], built["mods"] = client_fn, mods

    monkeypatch.setattr(flower_mod, "ClientApp", _Capture)
    flower_mod.make_client_app(model_fn, lambda i: client_datasets[i], fed, training_args)
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    return built["client_fn"](ctx).numpy_client


@pytest.mark.parametrize("delta", [-1, 1])
def test_secagg_client_refuses_a_global_state_of_another_size(
    monkeypatch, small_tokenizer, client_datasets, training_args, delta
):
    def model_fn():
        return tiny_llama(len(small_tokenizer))

    fed = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    client = _secagg_numpy_client(monkeypatch, model_fn, client_datasets, training_args, fed)
    state = initial_global_state(model_fn, fed, training_args.seed)
    arrays = [state[k].numpy() for k in sorted(state)]
    arrays = arrays[:-1] if delta < 0 else arrays + [np.zeros(3, dtype=np.float32)]
    with pytest.raises(ValueError, match=f"Received {len(arrays)} arrays but the local model exchanges {len(state)}"):
        client.fit(arrays, {ROUND_KEY: 1})
