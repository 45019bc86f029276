"""Slow reproduction at the recipe defaults (the paper's structure: LoRA on the attention and MLP projections,
30% of the canaries replicated 10x and 70% once, 3 non-IID clients, FedAvg), over 3 seeds: full fine-tuning
memorizes the 10x canaries measurably, LoRA less, LoRA with the Goldfish loss less again, and DP-SGD lowers LoRA's
exposure. Centralized counterpart (`--setting centralized`): full fine-tuning memorizes more than LoRA there too."""

import os
import statistics

import pytest

SEEDS = (0, 1, 2)


def _extraction(history, rep=10):
    """Greedy extraction of the `rep`x canaries: exact + approximate rate + mean char-BLEU, max over rounds."""
    return max(h[f"exact_{rep}x"] + h[f"approx_{rep}x"] + h[f"bleu_{rep}x"] for h in history[1:])


def _exposure_gain(history, rep=10):
    """Loss-gap exposure of the `rep`x canaries after the last round, minus that of the base model (round 0), in
    nats per token: removes the fixed difference in difficulty between the canary texts and the reference texts."""
    return history[-1][f"exposure_{rep}x"] - history[0][f"exposure_{rep}x"]


@pytest.mark.slow
def test_full_memorizes_more_than_lora_more_than_goldfish_and_dp_lowers_exposure(tmp_path):
    from hf_ext.recipes.federated import main

    extraction, exposure = {}, {}
    for seed in SEEDS:
        out = tmp_path / f"seed{seed}"
        res = main(["--output_dir", str(out), "--seed", str(seed), "--torch_threads", "1"])
        for name, run in res["runs"].items():
            extraction.setdefault(name, []).append(_extraction(run["history"]))
            exposure.setdefault(name, []).append(_exposure_gain(run["history"]))
        for name in ("results.json", "memorization_table.md", "memorization_vs_rounds.png"):
            assert os.path.getsize(out / name) > 0
    assert set(exposure) == {"full", "lora", "lora+goldfish", "lora+dp"}

    def mean(xs):
        return statistics.fmean(xs)

    for name in exposure:
        print(
            f"{name}: exposure gain 10x {mean(exposure[name]):.3f} +- {statistics.stdev(exposure[name]):.3f}, "
            f"extraction 10x {mean(extraction[name]):.3f} +- {statistics.stdev(extraction[name]):.3f}"
        )
    # full fine-tuning memorizes measurably: the 10x canaries are partly extracted by greedy decoding
    assert mean(extraction["full"]) > 0.2
    assert mean(extraction["full"]) > mean(extraction["lora"]) + 0.1
    # the ordering full > LoRA > LoRA+Goldfish in exposure, on average and in every seed
    assert mean(exposure["full"]) > mean(exposure["lora"]) + 0.2
    assert mean(exposure["lora"]) > mean(exposure["lora+goldfish"]) + 0.02
    for i in range(len(SEEDS)):
        assert exposure["full"][i] > exposure["lora"][i] > exposure["lora+goldfish"][i]
    # LoRA does memorize (the comparison is not empty), and DP-SGD lowers its exposure
    assert mean(exposure["lora"]) > 0.05
    assert mean(exposure["lora+dp"]) < mean(exposure["lora"]) - 0.02


@pytest.mark.slow
def test_centralized_full_memorizes_more_than_lora(tmp_path):
    """Issue 23 item 2: LoRA lowers memorization in centralized training too. `--setting centralized`: one client
    holding every federated client's documents and canary copies, trained for the same rounds and the same total
    optimizer steps (3 clients x 40 local steps -> 120 steps per round) as the federated runs above."""
    from hf_ext.recipes.federated import main

    extraction, exposure, exposure_1x = {}, {}, {}
    for seed in SEEDS:
        out = tmp_path / f"seed{seed}"
        argv = ["--output_dir", str(out), "--seed", str(seed), "--torch_threads", "1"]
        res = main([*argv, "--setting", "centralized", "--configs", "full,lora,lora+goldfish"])
        assert set(res["runs"]) == {"centralized/full", "centralized/lora", "centralized/lora+goldfish"}
        for name, run in res["runs"].items():
            assert run["num_clients"] == 1 and run["client_sizes"] == [sum(res["client_sizes"])]
            assert run["optimizer_steps"] == 4 * 40 * 3  # the federated defaults' total: rounds x steps x clients
            extraction.setdefault(name, []).append(_extraction(run["history"]))
            exposure.setdefault(name, []).append(_exposure_gain(run["history"]))
            exposure_1x.setdefault(name, []).append(_exposure_gain(run["history"], rep=1))
        for name in ("results.json", "memorization_table.md", "memorization_vs_rounds.png"):
            assert os.path.getsize(out / name) > 0

    def mean(xs):
        return statistics.fmean(xs)

    for name in exposure:
        print(
            f"{name}: exposure gain 10x {mean(exposure[name]):.3f} +- {statistics.stdev(exposure[name]):.3f} "
            f"{[round(x, 2) for x in exposure[name]]}, 1x {mean(exposure_1x[name]):.3f} +- "
            f"{statistics.stdev(exposure_1x[name]):.3f}, extraction 10x {mean(extraction[name]):.3f} +- "
            f"{statistics.stdev(extraction[name]):.3f}"
        )
    full, lora = exposure["centralized/full"], exposure["centralized/lora"]
    goldfish = exposure["centralized/lora+goldfish"]
    # full fine-tuning has the larger exposure gain, on average several times LoRA's (measured 8.9 vs 1.1 nats per
    # token, asserted > 3x) and in every seed; the same holds for the canaries seen once (measured 8.4 vs 0.5)
    assert mean(full) > 3 * mean(lora)
    assert all(f > lo for f, lo in zip(full, lora))
    assert mean(exposure_1x["centralized/full"]) > 3 * mean(exposure_1x["centralized/lora"])
    # LoRA does memorize (the comparison is not empty), and the Goldfish loss lowers its exposure (measured by 0.22)
    assert mean(lora) > 0.05
    assert mean(goldfish) < mean(lora) - 0.02
