"""Pass-18 federated fixes: argument checks of the public SecAgg and Flower entry points."""

import pytest
import torch

from hf_ext.federated import FederatedArguments, fedavg, secure_aggregate


def _updates():
    return {0: {"a": torch.tensor([10.0, 0.0])}, 1: {"a": torch.tensor([1.0, 2.0])}, 2: {"a": torch.tensor([1.0, 4.0])}}


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "3"])
def test_secure_aggregate_refuses_a_weight_fedavg_refuses(bad):
    # a negative weight scales the masked upload, so the server cannot see it; fedavg refuses the same weights
    ups = _updates()
    with pytest.raises(ValueError, match="`weights` must be finite and non-negative.*client 0"):
        secure_aggregate(ups, {0: bad, 1: 1.0, 2: 1.0})
    if not isinstance(bad, str):
        with pytest.raises(ValueError, match="finite and non-negative"):
            fedavg([ups[i] for i in range(3)], [bad, 1.0, 1.0])


def test_secure_aggregate_still_averages_with_valid_weights():
    ups = _updates()
    mean, total, _ = secure_aggregate(ups, {0: 0, 1: 1, 2: 3})
    assert total == 4
    torch.testing.assert_close(mean["a"].float(), torch.tensor([1.0, 3.5]), atol=1e-6, rtol=0)


def test_secure_aggregate_names_the_client_whose_update_has_another_layout():
    ups = _updates()
    ups[2] = {"a": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"`updates\[2\]\['a'\]` has shape \(3,\)"):
        secure_aggregate(ups, {0: 1, 1: 1, 2: 1})
    ups[2] = {"b": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"`updates\[2\]` has other tensors.*extra \['b'\], missing \['a'\]"):
        secure_aggregate(ups, {0: 1, 1: 1, 2: 1})


def test_merge_then_average_without_lora_is_refused():
    with pytest.raises(ValueError, match="merge_then_average merges LoRA factors, so it needs --use_lora"):
        FederatedArguments(use_lora=False, aggregation="merge_then_average")
    FederatedArguments(use_lora=False)  # full fine-tuning with plain averaging stays available


@pytest.mark.parametrize("bad", [2.5, "3", True, 0])
def test_make_server_app_refuses_a_non_integer_num_clients(bad):
    pytest.importorskip("flwr")
    from hf_ext.federated.flower import make_server_app

    with pytest.raises(ValueError, match="`num_clients` must be an integer >= 1"):
        make_server_app(lambda: None, FederatedArguments(), bad)


def test_secure_aggregate_keeps_accepting_tensor_weights_and_placeholder_updates_of_dropped_clients():
    # review of the checks above: a 0-d tensor weight (as a Trainer reports counts) and an empty update for a client
    # that never uploads (drop_before_upload) worked before and give the uploaders' weighted mean
    import numpy as np

    ups = _updates()
    mean, total, _ = secure_aggregate(ups, {0: torch.tensor(0), 1: np.int64(1), 2: torch.tensor(3.0)})
    assert total == 4
    torch.testing.assert_close(mean["a"].float(), torch.tensor([1.0, 3.5]), atol=1e-6, rtol=0)
    ups[0] = {}
    mean, total, _ = secure_aggregate(ups, {0: 5, 1: 1, 2: 3}, drop_before_upload=[0])
    assert total == 4
    torch.testing.assert_close(mean["a"].float(), torch.tensor([1.0, 3.5]), atol=1e-6, rtol=0)
    for bad in (torch.tensor(-1.0), torch.tensor([1.0, 2.0]), torch.tensor(True)):
        with pytest.raises(ValueError, match="finite and non-negative"):
            secure_aggregate(_updates(), {0: bad, 1: 1, 2: 1})
