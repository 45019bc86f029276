"""Slow reproduction at the recipe defaults (the paper's structure: LoRA on the attention and MLP projections,
30% of the canaries replicated 10x and 70% once, 3 non-IID clients, FedAvg), over 3 seeds, through
`hf-ext reproduce federated` (setting and claims registered in `hf_ext.reproduce.methods`): full fine-tuning memorizes
the 10x canaries measurably, LoRA less, LoRA with the Goldfish loss less again, and DP-SGD lowers LoRA's exposure;
in the centralized counterpart (`--setting centralized`, one client, the same optimizer steps) full fine-tuning
memorizes several times more than LoRA too."""

import os

import pytest

from hf_ext.reproduce import reproduce

SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_federated_memorization_reproduction(tmp_path):
    report = reproduce("federated", seeds=list(SEEDS), output_dir=str(tmp_path), jobs=len(SEEDS))
    print(report.to_markdown())
    assert report.holds, report.to_markdown()
    assert [r.asserted for r in report.rows] == [True] * 4  # every claim is asserted, none only reported
    assert report.seeds == list(SEEDS) and len(report.per_seed) == len(SEEDS)
    # per_seed is in the order of report.seeds (a list, not keyed by seed): pair them, never index by the seed
    for seed, results in zip(report.seeds, report.per_seed):
        for setting in ("federated", "centralized"):
            for name in ("results.json", "memorization_table.md", "memorization_vs_rounds.png"):
                assert os.path.getsize(tmp_path / f"seed{seed}" / setting / name) > 0
        assert set(results["federated"]) == {"full", "lora", "lora+goldfish", "lora+dp"}
        assert set(results["centralized"]) == {"full", "lora", "lora+goldfish"}
