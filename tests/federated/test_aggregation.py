"""FedAvg and LoRA aggregation math, client-level DP, and invalid inputs."""

import pytest
import torch

from hf_ext.federated import (
    FederatedArguments,
    add_server_noise,
    aggregate_round,
    aggregate_uploads,
    apply_secure_mean,
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
    noised, std = add_server_noise({"w": torch.zeros(200_000, dtype=torch.float64)}, 0.5, 2.0, 4, gen)
    assert std == pytest.approx(2.0 * 0.5 / 4)  # sigma * C / num_clients
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


def _released(g0, present, clip, num_clients, sigma=0.0, seed=0):
    """What the server releases for the clients `present` (client-level DP, fixed federation size)."""
    gen = torch.Generator().manual_seed(seed)
    out = aggregate_round(g0, present, [1.0] * len(present), "full", None, clip, sigma, gen, num_clients=num_clients)
    return out["w"]


@pytest.mark.parametrize("weights", [[10.0, 10.0, 10.0], [10.0, 20.0, 30.0]])
def test_client_level_dp_sensitivity_is_what_the_noise_assumes(weights):
    """As the attacker: add/remove one client (and replace one) and measure how far the noiseless release moves,
    against the sensitivity implied by the noise the server actually adds (its empirical std / sigma)."""
    clip, sigma, n = 1.0, 2.0, 3
    g0 = {"w": torch.zeros(50_000, dtype=torch.float64)}
    e = torch.zeros(50_000, dtype=torch.float64)
    e[0] = 5.0  # far beyond the clip norm: clipped to norm exactly `clip`
    clients = [{"w": e.clone()}, {"w": -e.clone()}, {"w": -e.clone()}]
    # the executed mechanism's noise: released(noised) - released(noiseless), from the server's own code path
    noise = _released(g0, clients, clip, n, sigma, seed=1) - _released(g0, clients, clip, n)
    assumed = float(noise.std()) / sigma  # the sensitivity the noise is calibrated for (about clip / n)
    assert assumed == pytest.approx(clip / n, rel=0.02)
    full = _released(g0, clients, clip, n)
    worst_remove = max(
        float((full - _released(g0, [c for i, c in enumerate(clients) if i != j], clip, n)).norm()) for j in range(n)
    )
    assert worst_remove <= assumed * 1.02  # add/remove one client: within the calibration ...
    assert worst_remove == pytest.approx(clip / n, rel=1e-9)  # ... and the bound is attained (the test has teeth)
    replaced = _released(g0, [{"w": -e.clone()}, *clients[1:]], clip, n)
    assert float((full - replaced).norm()) <= 2 * assumed * 1.02  # replace-one: twice (documented)
    # the weights clients report cannot raise anyone's influence under client-level DP
    gen = torch.Generator().manual_seed(0)
    weighted = aggregate_round(g0, clients, weights, "full", None, clip, 0.0, gen, num_clients=n)["w"]
    torch.testing.assert_close(weighted, full)


def test_secure_mean_uses_the_fixed_federation_size_after_a_dropout():
    fed = FederatedArguments(use_lora=False, client_dp_clip_norm=1.0, client_dp_noise_seed=0)
    g0 = {"w": torch.zeros(4, dtype=torch.float64)}
    u = [torch.tensor([0.6, 0.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 0.3, 0.0, 0.0])]
    mean_of_survivors = {"w": (u[0] + u[1].double()) / 2}  # what secure aggregation returns with weights [1, 1]
    out = apply_secure_mean(g0, mean_of_survivors, [1.0, 1.0], fed, 1, num_clients=3)
    torch.testing.assert_close(out["w"], (u[0] + u[1].double()) / 3)  # divided by 3, not by the 2 present
    with pytest.raises(ValueError, match="weight 1"):
        apply_secure_mean(g0, mean_of_survivors, [10.0, 20.0], fed, 1, num_clients=3)
    with pytest.raises(ValueError, match="num_clients"):
        aggregate_round(g0, [g0, g0, g0], [1, 1, 1], "full", client_clip_norm=1.0, num_clients=2)


def test_client_level_dp_noise_is_not_regenerable_from_the_public_seed():
    """As the attacker who knows the run configuration (training seed, round): regenerating the server noise from
    it must not recover the noiseless aggregate; with the explicit opt-in seed it does (the test can fail)."""
    torch.manual_seed(0)
    g = {"w": torch.zeros(2000, dtype=torch.float64)}
    ups = [{"w": 0.01 * torch.randn(2000, dtype=torch.float64)} for _ in range(3)]
    weights, seed, r, sigma = [10.0, 20.0, 30.0], 42, 3, 5.0
    truth = sum(u["w"] for u in ups) / 3

    def attack(released, noise_seed):
        from hf_ext.federated import privacy

        stds = (sigma / 3, sigma * max(weights) / sum(weights))  # the std now / the std before the fixed denominator
        gens = [seed + 7919 * r]  # the generator seed the server once derived from the public seed
        if hasattr(privacy, "derive_seed"):  # and the one the explicit opt-in derives from its noise seed
            gens.append(privacy.derive_seed("client-dp-noise", noise_seed, r))
        best = min(
            float(
                (
                    released
                    - torch.normal(0.0, s, (2000,), generator=torch.Generator().manual_seed(k), dtype=torch.float64)
                    - truth
                )
                .abs()
                .max()
            )
            for s in stds
            for k in gens
        )
        return best

    fed = FederatedArguments(use_lora=False, client_dp_clip_norm=1.0, client_dp_noise_multiplier=sigma)
    released = aggregate_uploads(g, ups, weights, fed, r, seed)["w"]  # all 3 clients present
    again = aggregate_uploads(g, ups, weights, fed, r, seed)["w"]
    assert attack(released, seed) > sigma / 3  # the regenerated noise does not cancel
    assert float((released - truth).std()) == pytest.approx(sigma / 3, rel=0.1)  # noised as calibrated
    assert not torch.equal(released, again)  # fresh secret noise every time
    opt_in = FederatedArguments(
        use_lora=False, client_dp_clip_norm=1.0, client_dp_noise_multiplier=sigma, client_dp_noise_seed=seed
    )
    reproducible = aggregate_uploads(g, ups, weights, opt_in, r, seed)["w"]
    assert attack(reproducible, seed) < 1e-9  # with a known noise seed the noise is removed exactly


def test_merge_then_average_averages_trained_non_lora_tensors():
    """PEFT `modules_to_save` copies are trained too: merge mode must average them like everything else."""
    torch.manual_seed(0)
    g = {
        "m.lora_A.weight": torch.randn(4, 8),
        "m.lora_B.weight": torch.zeros(6, 4),
        "m.base_layer.weight": torch.randn(6, 8),
        "head.modules_to_save.default.weight": torch.randn(5, 3),
    }
    cs = [
        {k: v.clone() if k == "m.base_layer.weight" else v + 0.1 * (i + 1) * torch.randn_like(v) for k, v in g.items()}
        for i in range(3)
    ]
    w = [70, 141, 293]
    p = torch.tensor(w, dtype=torch.float64) / sum(w)
    out = aggregate_round(g, cs, w, "merge_then_average", lora_scaling=2.0)
    k = "head.modules_to_save.default.weight"
    expected = sum(p[i] * cs[i][k].double() for i in range(3))
    torch.testing.assert_close(out[k].double(), expected, atol=1e-6, rtol=0)
    base = g["m.base_layer.weight"].double() + sum(
        p[i] * 2.0 * cs[i]["m.lora_B.weight"].double() @ cs[i]["m.lora_A.weight"].double() for i in range(3)
    )
    torch.testing.assert_close(out["m.base_layer.weight"].double(), base, atol=1e-5, rtol=0)
    assert torch.equal(out["m.lora_A.weight"], g["m.lora_A.weight"])  # fresh adapter kept
