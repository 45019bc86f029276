"""A non-finite client upload is refused naming the client instead of turning the global state into NaN, also under
client-level DP, whose clipping cannot bound it (audit fd14, finding C); FederatedArguments refuses string switches
and a non-finite lora_alpha (finding G); Goldfish warns, once, when rows are shorter than its window (finding F)."""

import math
import warnings

import numpy as np
import pytest
import torch

from hf_ext.federated import FederatedArguments, apply_goldfish
from hf_ext.federated.aggregation import aggregate_round, clip_update, fedavg
from hf_ext.federated.simulation import aggregate_uploads

GLOBAL = {"layer.lora_A.weight": torch.zeros(2, 3), "layer.lora_B.weight": torch.zeros(3, 2)}


def _uploads(bad_value):
    honest = {k: v + 0.1 for k, v in GLOBAL.items()}
    bad = {k: v.clone() for k, v in honest.items()}
    bad["layer.lora_B.weight"][1, 0] = bad_value
    return [honest, bad]


@pytest.mark.parametrize("bad_value", [math.inf, -math.inf, math.nan])
def test_clip_update_refuses_a_non_finite_norm(bad_value):
    update = {k: v - GLOBAL[k] for k, v in _uploads(bad_value)[1].items()}
    with pytest.raises(ValueError, match="non-finite L2 norm"):  # was: inf -> NaN entries, NaN -> kept unscaled
        clip_update(update, 1.0)


@pytest.mark.parametrize("bad_value", [math.inf, math.nan])
@pytest.mark.parametrize("client_dp", [None, 1.0])
def test_aggregation_refuses_a_non_finite_client_naming_it(bad_value, client_dp):
    uploads = _uploads(bad_value)
    with pytest.raises(ValueError, match=r"`client_states\[1\]` sent a non-finite tensor 'layer.lora_B.weight'"):
        aggregate_round(GLOBAL, uploads, [10.0, 10.0], client_clip_norm=client_dp)
    with pytest.raises(ValueError, match=r"`client_states\[1\]`.*'layer.lora_B.weight'"):
        fedavg(uploads, [10.0, 10.0])
    fed = FederatedArguments(client_dp_clip_norm=client_dp)
    with pytest.raises(ValueError, match="client 7 sent a non-finite tensor"):
        aggregate_uploads(GLOBAL, uploads, [10.0, 10.0], fed, 1, client_names=["client 3", "client 7"])


def test_flower_app_refuses_a_diverged_clients_state_and_writes_nothing(tmp_path):
    """The Flower App's plain FedAvg path (in-process grid): a learning rate that makes the clients diverge used to
    write an all-NaN adapter marked complete; the ServerApp now fails naming the partition."""
    from flwr.app import Context, RecordDict

    from hf_ext.federated.flower_task import run_config_client_app, run_config_server_app

    from .flower_harness import InProcessGrid

    out = tmp_path / "global.safetensors"
    rc = {"num-server-rounds": 1, "local-steps": 1, "secure-aggregation": False, "learning-rate": 1e38,
          "output-path": str(out), "work-dir": str(tmp_path / "work")}  # fmt: skip
    grid = InProcessGrid(run_config_client_app(), 2, run_config=rc)
    with pytest.raises(ValueError, match="partition-id 0 .* sent a non-finite tensor"):
        run_config_server_app()(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    assert not out.exists() and not (tmp_path / "global.safetensors.json").exists()


@pytest.mark.parametrize("name", ["use_lora", "secure_aggregation"])
@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_switches_must_be_bools(name, value):
    with pytest.raises(TypeError, match=f"--{name} must be a bool"):  # "false" used to switch it on
        FederatedArguments(**{name: value})


def test_numpy_bool_switches_become_python_bools():
    fed = FederatedArguments(use_lora=np.bool_(False), secure_aggregation=np.bool_(True))
    assert fed.use_lora is False and fed.secure_aggregation is True and fed.mode == "full"


@pytest.mark.parametrize("alpha", [math.inf, math.nan, -1.0, 0.0, "16"])
def test_lora_alpha_must_be_finite_and_positive(alpha):
    with pytest.raises(ValueError, match="--lora_alpha a finite number > 0"):  # inf made every LoRA output NaN
        FederatedArguments(lora_alpha=alpha)


def test_goldfish_warns_once_per_call_when_rows_are_shorter_than_the_window():
    labels = torch.arange(5, 5 + 8 * 10).reshape(8, 10)  # 8 rows of 9 targets each
    with pytest.warns(UserWarning, match="fewer targets than the hashed window h = 13") as record:
        out = apply_goldfish(labels, k=2, context_width=13)
    assert len([w for w in record if "Goldfish" in str(w.message)]) == 1  # one warning, not one per row
    assert torch.equal(out, labels)  # nothing dropped
    mask = torch.ones_like(labels)
    mask[3, 6:] = 0  # one right-padded row, the others full length
    with pytest.warns(UserWarning, match="h = 9"):
        apply_goldfish(labels, k=2, context_width=9, attention_mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rows long enough: no warning
        apply_goldfish(labels, k=2, context_width=9)
        apply_goldfish(labels, k=2, context_width=9, attention_mask=torch.ones_like(labels))
