"""FedAvg and LoRA aggregation math, client-level DP, and invalid inputs."""

import pytest
import torch

from hf_ext.federated import (
    add_server_noise,
    aggregate_round,
    clip_update,
    fedavg,
    lora_delta,
    merge_then_average,
    state_norm,
)


def _lora_state(seed, out=6, inp=5, r=2, prefix="m.q"):
    g = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}.lora_A.default.weight": torch.randn(r, inp, generator=g),
        f"{prefix}.lora_B.default.weight": torch.randn(out, r, generator=g),
    }


def test_fedavg_equals_weighted_mean_with_paper_weights():
    states = [{"w": torch.randn(4, 3), "b": torch.randn(3)} for _ in range(3)]
    weights = [70, 141, 293]
    out = fedavg(states, weights)
    for key in ("w", "b"):
        expected = sum(w * s[key].double() for w, s in zip(weights, states)) / sum(weights)
        torch.testing.assert_close(out[key].double(), expected, atol=1e-6, rtol=0)
    assert out["w"].dtype == states[0]["w"].dtype


def test_fedavg_of_identical_states_is_identity():
    s = {"w": torch.randn(5)}
    torch.testing.assert_close(fedavg([s, s, s], [1, 2, 3])["w"], s["w"])


def test_merge_then_average_is_exact_product_average_and_factor_average_is_not():
    scaling = 0.5
    states = [_lora_state(i) for i in range(3)]
    weights = [1.0, 2.0, 3.0]
    merged = merge_then_average(states, weights, scaling)["m.q"]
    expected = sum(
        w * scaling * s["m.q.lora_B.default.weight"].double() @ s["m.q.lora_A.default.weight"].double()
        for w, s in zip(weights, states)
    ) / sum(weights)
    torch.testing.assert_close(merged, expected, atol=1e-6, rtol=0)
    factors = fedavg(states, weights)
    from_factors = lora_delta(factors, scaling)["m.q"]
    assert (from_factors - expected).abs().max() > 1e-3  # avg(B) @ avg(A) != avg(B @ A)
    # ... unless all clients agree
    same = [states[0]] * 3
    torch.testing.assert_close(
        lora_delta(fedavg(same, weights), scaling)["m.q"], merge_then_average(same, weights, scaling)["m.q"]
    )


def test_aggregate_round_modes():
    base = torch.randn(6, 5)
    fresh = _lora_state(99)
    global_state = {"m.q.base_layer.weight": base, **fresh}
    clients = [{"m.q.base_layer.weight": base, **_lora_state(i)} for i in range(3)]
    weights = [3, 1, 2]
    new = aggregate_round(global_state, clients, weights, "merge_then_average", lora_scaling=2.0)
    delta = merge_then_average(clients, weights, 2.0)["m.q"]
    torch.testing.assert_close(new["m.q.base_layer.weight"].double(), base.double() + delta, atol=1e-5, rtol=0)
    for k in fresh:  # the adapter restarts from the round's fresh initialisation
        torch.testing.assert_close(new[k], fresh[k])
    new_f = aggregate_round(global_state, clients, weights, "factors")
    ref = fedavg(clients, weights)
    for k in ref:
        torch.testing.assert_close(new_f[k], ref[k], atol=1e-6, rtol=0)


def test_client_level_clipping_and_noise():
    g = {"w": torch.zeros(2000, dtype=torch.float64)}
    clients = [
        {"w": torch.full((2000,), 10.0, dtype=torch.float64)},
        {"w": torch.full((2000,), 0.001, dtype=torch.float64)},
    ]
    clipped = clip_update({"w": clients[0]["w"]}, 1.0)
    assert state_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    small = clip_update({"w": clients[1]["w"]}, 1.0)
    torch.testing.assert_close(small["w"], clients[1]["w"])  # within the bound: untouched
    no_noise = aggregate_round(g, clients, [1, 1], "full", client_clip_norm=1.0)
    expected = (clipped["w"] + clients[1]["w"]) / 2
    torch.testing.assert_close(no_noise["w"], expected)
    gen = torch.Generator().manual_seed(0)
    noised, std = add_server_noise({"w": torch.zeros(200_000, dtype=torch.float64)}, 0.5, 2.0, [1, 1, 2], gen)
    assert std == pytest.approx(2.0 * 0.5 * 0.5)  # sigma * C * max_c p_c
    assert float(noised["w"].std()) == pytest.approx(std, rel=0.02)


def test_mismatched_adapters_and_bad_weights_raise():
    a = _lora_state(0, r=2)
    b = _lora_state(1, r=4)
    with pytest.raises(ValueError, match="LoRA ranks"):
        fedavg([a, b], [1, 1])
    c = _lora_state(2, prefix="m.k")
    with pytest.raises(ValueError, match="same adapter"):
        fedavg([a, c], [1, 1])
    with pytest.raises(ValueError, match="0 examples"):
        fedavg([a, a], [0, 0])
    with pytest.raises(ValueError, match="one weight per client"):
        fedavg([a, a], [1])
    with pytest.raises(ValueError, match="mode"):
        aggregate_round(a, [a], [1], mode="median")
    with pytest.raises(ValueError, match="lora_scaling"):
        aggregate_round(a, [a], [1], mode="merge_then_average")
    with pytest.raises(ValueError, match="base weight|not in `global_state`"):
        aggregate_round(a, [a], [1], mode="merge_then_average", lora_scaling=1.0)
