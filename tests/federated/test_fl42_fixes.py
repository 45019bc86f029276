"""fl42: Flower SecAgg+ field overflow with many clients."""

import numpy as np
import pytest


def _flower_secagg_mean(updates, clipping_range, target_range, mod_range):
    """Flower 1.42's SecAgg+ arithmetic for equal weights (ratio 1) without masks (they cancel exactly modulo
    `mod_range`): `secaggplus_mod`'s quantization, the sum modulo `mod_range`, the workflow's unmask-stage decoding."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_combine, factor_extract, parameters_mod
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    total = None
    for u in updates:
        uploaded = [
            a.astype(np.int64) for a in factor_combine(target_range, quantize([u], clipping_range, target_range))
        ]
        total = uploaded if total is None else [a + b for a, b in zip(total, uploaded)]
    q_total, summed = factor_extract(parameters_mod(total, mod_range))
    vec = dequantize(summed, clipping_range, target_range)[0] - (len(updates) - 1) * clipping_range
    with np.errstate(all="ignore"):
        return vec * (target_range / q_total)


def test_secagg_server_refuses_more_clients_than_the_field_holds():
    """Every Flower node uploads quantized values of up to 2^22 that SecAgg+ sums modulo 2^32; flwr refuses an integer
    `num_shares` above 2^32 / 2^22 for that reason, but hf_ext passes the float `num_shares=1.0`, which flwr does not
    check. `make_server_app` used to accept 1500 secure-aggregation clients, whose mean came out 1500 / 476 = 3.15x too large (the summed weights wrap modulo 2^32)."""
    pytest.importorskip("flwr")
    from hf_ext.federated import FederatedArguments
    from hf_ext.federated.flower import SECAGG_MODULUS_RANGE, SECAGG_QUANTIZATION_RANGE, make_server_app

    rng = np.random.default_rng(0)
    for n, ok in ((1023, True), (1500, False)):
        ups = [rng.normal(0.0, 0.01, 16) for _ in range(n)]
        got = _flower_secagg_mean(ups, 8.0, SECAGG_QUANTIZATION_RANGE, SECAGG_MODULUS_RANGE)
        err = float(np.max(np.abs(got - np.mean(ups, axis=0))))
        assert (err < 1e-5) == ok, (n, err)  # the field really wraps above 1023 nodes

    fed = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    make_server_app(lambda: None, fed, num_clients=1023)  # the largest federation that fits
    for n in (1024, 1500):
        with pytest.raises(ValueError, match="at most 1023 clients"):
            make_server_app(lambda: None, fed, num_clients=n)
    make_server_app(lambda: None, FederatedArguments(num_rounds=1, local_steps=1), num_clients=1500)  # no SecAgg+
