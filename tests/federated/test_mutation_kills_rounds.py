"""Mutation-testing gaps of the federated server step and round bookkeeping that the other tests let through: the
server noise of client-level DP after secure aggregation, per-round data seeds, the example-weighted round loss and
the SecAgg+ quantization-error bound. Each expected value comes from the documented formula or from Flower's own
quantizer, never from a snapshot of the current output."""

import math

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from hf_ext.federated import FederatedArguments, PrivateTrainingArguments
from hf_ext.federated.flower import aggregate_train_metrics, secagg_quantization_error
from hf_ext.federated.simulation import apply_secure_mean, client_training_args


@pytest.mark.parametrize("noise_seed", [0, None])
def test_secure_mean_under_client_dp_adds_noise_of_std_z_c_over_n(noise_seed):
    """Client-level DP after secure aggregation: the server only sees the mean of the uploads, rescales it to the
    fixed denominator `num_clients` and must add Gaussian noise of std `z * C / num_clients` (add_server_noise,
    DP-FedAvg). Without the noise the accountant's epsilon would describe a release that carries no noise at all.

    40,000 entries: the sample std is within 3% of its expectation at ~8 standard errors (seeded and secret)."""
    d, z, clip, n = 40_000, 1.5, 2.0, 4
    fed = FederatedArguments(
        use_lora=False,
        secure_aggregation=True,
        client_dp_clip_norm=clip,
        client_dp_noise_multiplier=z,
        client_dp_noise_seed=noise_seed,
    )
    global_state = {"w": torch.zeros(d, dtype=torch.float64)}
    mean = {"w": torch.full((d,), 0.01, dtype=torch.float64)}
    out = apply_secure_mean(global_state, mean, [1.0, 1.0], fed, 1, num_clients=n)["w"].double()
    noiseless = 0.01 * 2 / n  # sum of the two uploads / the federation size
    resid = out - noiseless
    expected = z * clip / n
    assert float(resid.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(resid.mean())) < 6 * expected / math.sqrt(d)  # the noise is centred on the noise-free mean


def test_data_seed_differs_for_every_client_and_round(tmp_path):
    """With `data_seed` set, every client and every round must draw its own batches (client_training_args: "every
    client and round draws its own Poisson batches"). A seed that ignores the round re-draws the very same DP-SGD
    batches each round."""
    args = PrivateTrainingArguments(output_dir=str(tmp_path), data_seed=7, report_to="none", use_cpu=True)
    fed = FederatedArguments()
    seeds = [client_training_args(args, fed, c, r).data_seed for c in (0, 1) for r in (1, 2, 3)]
    assert all(isinstance(s, int) for s in seeds)
    assert len(set(seeds)) == 6, seeds


def test_round_train_loss_is_the_example_weighted_mean():
    """aggregate_train_metrics documents the round's `train_loss` as the example-weighted mean of the clients' losses:
    10 examples at loss 1.0 and 30 at 3.0 give (10 * 1 + 30 * 3) / 40 = 2.5 (an unweighted mean would say 2.0)."""
    records = [
        RecordDict({"metrics": MetricRecord({"num-examples": 10, "partition-id": 0, "train_loss": 1.0})}),
        RecordDict({"metrics": MetricRecord({"num-examples": 30, "partition-id": 1, "train_loss": 3.0})}),
    ]
    out = dict(aggregate_train_metrics(records, "num-examples"))
    assert out["train_loss"] == pytest.approx(2.5, rel=1e-12)


def _flower_relative_error(update: np.ndarray, ratio: float, clip: float, seed: int) -> float:
    """The relative L2 error of Flower's own SecAgg+ client-side scaling + quantization of one upload."""
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    q = 2**22
    dq_ratio = round(ratio * q) / q
    np.random.seed(seed)
    back = dequantize(quantize([dq_ratio * update], clip, q), clip, q)[0] / dq_ratio
    return float(np.linalg.norm(back - update) / np.linalg.norm(update))


def test_secagg_quantization_error_is_the_documented_half_step_bound():
    """secagg_quantization_error documents `sqrt(d) * step / 2 / (ratio * ||u||)` (+ the weight's rounding error,
    0 here: ratio 1/4 is exact in 2^-22 units), step = 2 * clipping_range / 2^22. Stochastic rounding with uniform
    fractional parts has an RMS error of step / sqrt(6) per entry, so the bound is ~1.22x Flower's measured error. A
    bound twice too large (without the /2) still lies above the measured error, but it turns warnings into refused
    rounds; here it would be ~2.45x the measured error."""
    max_weight, n = 1024.0, 256
    ratio = n / max_weight
    rng = np.random.default_rng(0)
    update = rng.normal(0, 5e-3, 5000)
    fed = FederatedArguments(secure_aggregation=True, secagg_max_weight=max_weight)
    bound = secagg_quantization_error({"w": torch.from_numpy(update)}, n, fed)
    step = 2 * fed.secagg_clipping_range / 2**22
    assert bound == pytest.approx(math.sqrt(update.size) * step / 2 / (ratio * np.linalg.norm(update)), rel=1e-9)
    for seed in (0, 1, 2):
        measured = _flower_relative_error(update, ratio, fed.secagg_clipping_range, seed)
        assert measured <= bound <= 1.5 * measured, (seed, measured, bound)


def test_secagg_quantization_error_adds_the_weight_ratio_rounding_error():
    """SecAgg+ rounds the weight ratio to `round(ratio * 2^22) / 2^22` too: ratio 1.5 / 2^22 becomes 2 / 2^22, a
    relative error of 1/3, which secagg_quantization_error must add to the (here tiny, 16 / 3e5) update term; without
    it a client whose weight is a third off would upload without a warning."""
    from hf_ext.federated.flower import check_secagg_range

    fed = FederatedArguments(secagg_max_weight=2**22 / 1.5)
    update = {"w": torch.full((4,), 1e5)}
    ratio, step = 1.5 / 2**22, 2 * fed.secagg_clipping_range / 2**22
    update_term = math.sqrt(4) * step / 2 / (ratio * 2e5)
    assert update_term < 1e-4
    assert secagg_quantization_error(update, 1, fed) == pytest.approx(update_term + 1 / 3, rel=1e-9)
    with pytest.warns(UserWarning, match="expected relative error of up to 0.333"):
        check_secagg_range(update, 1, fed)
