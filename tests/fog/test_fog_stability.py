"""Slow reproduction: FOG keeps activation kurtosis down in FP8 where a Llama-style block lets it grow.

4-layer Llama-style baseline vs FOG, both with every block linear in FP8 (emulated, delayed scaling) and the attention
BMMs in FP8, under the same high learning rate; FOG also in BF16 (autocast) as its precision reference. Five seeds
(initialisation and the order of the corpus' blocks); the assertions hold in every seed with the slack noted there, and
the printed summary gives mean, spread and range per measure. Run with `pytest tests/fog/test_fog_stability.py -m slow -s` to see the numbers.
"""

import json
import time

import pytest
import torch

from hf_ext.fp8 import KurtosisMonitor, convert
from hf_ext.models.fog import FogConfig

STEPS, BATCH, SEQ, LR, EVERY = 100, 8, 64, 1e-2, 10
SIZE = dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, swiglu_intermediate_size=192)


def run(config: FogConfig, fp8: bool, batches: torch.Tensor, seed: int) -> dict:
    from hf_ext.models.fog import FogForCausalLM

    torch.manual_seed(seed)
    model = FogForCausalLM._from_config(config, attn_implementation="eager")
    if fp8:
        convert(model, "emulated", scaling="delayed", fp8_attention=True)
    monitor = KurtosisMonitor(model, sites=["qkv_input"])
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    losses, kurt = [], []
    start = time.time()
    for i, ids in enumerate(batches):
        monitored = (i + 1) % EVERY == 0
        if monitored:
            monitor.enable()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not fp8):
            loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        monitor.disable()
        if monitored:
            kurt.append(monitor.collect()["qkv_input/kurtosis/avg"])
        losses.append(loss.item())
    return {"losses": losses, "kurtosis": kurt, "seconds": time.time() - start}


SEEDS = (0, 1, 2, 3, 4)  # 0: the corpus' first blocks in order; others: a seeded shuffle of the blocks (and init seed)
EARLY, LATE = slice(0, 2), slice(5, 10)  # monitored steps 10-20 and 60-100


def mean(values):
    return sum(values) / len(values)


def seed_batches(blocks: torch.Tensor, seed: int) -> torch.Tensor:
    if seed:
        order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
        blocks = blocks[order]
    return blocks[: STEPS * BATCH].view(STEPS, BATCH, SEQ)


def windows(losses):
    return [sum(losses[i : i + EVERY]) / EVERY for i in range(0, STEPS, EVERY)]


@pytest.mark.slow
def test_fog_fp8_kurtosis_stays_below_llama_and_tracks_bf16(corpus, small_tokenizer):
    from hf_ext.data import pack_dataset

    blocks = torch.tensor(pack_dataset(corpus, small_tokenizer, block_size=SEQ)["input_ids"])
    per_seed = []
    for seed in SEEDS:
        batches = seed_batches(blocks, seed)
        llama = run(FogConfig.llama_baseline(**SIZE), True, batches, seed)
        fog_fp8 = run(FogConfig.fog(**SIZE), True, batches, seed)
        fog_bf16 = run(FogConfig.fog(**SIZE), False, batches, seed)
        k_llama, k_fog = llama["kurtosis"], fog_fp8["kurtosis"]
        gaps = [abs(a - b) / b for a, b in zip(windows(fog_fp8["losses"]), windows(fog_bf16["losses"]))]
        growth_llama = mean(k_llama[LATE]) / mean(k_llama[EARLY])
        growth_fog = mean(k_fog[LATE]) / mean(k_fog[EARLY])
        per_seed.append(
            {
                "seed": seed,
                "qkv_input_kurtosis_llama_fp8": [round(k, 2) for k in k_llama],
                "qkv_input_kurtosis_fog_fp8": [round(k, 2) for k in k_fog],
                "qkv_input_kurtosis_fog_bf16": [round(k, 2) for k in fog_bf16["kurtosis"]],
                "late_kurtosis_llama_over_fog": round(mean(k_llama[LATE]) / mean(k_fog[LATE]), 3),
                "growth_llama": round(growth_llama, 3),
                "growth_fog": round(growth_fog, 3),
                "growth_llama_over_fog": round(growth_llama / growth_fog, 3),
                "loss_windows_llama_fp8": [round(v, 3) for v in windows(llama["losses"])],
                "loss_windows_fog_fp8": [round(v, 3) for v in windows(fog_fp8["losses"])],
                "loss_windows_fog_bf16": [round(v, 3) for v in windows(fog_bf16["losses"])],
                "max_window_gap_fog_fp8_vs_bf16": round(max(gaps), 4),
                "mean_window_gap_fog_fp8_vs_bf16": round(mean(gaps), 4),
            }
        )
        print(json.dumps(per_seed[-1]))

    def summary(key):
        values = [r[key] for r in per_seed]
        m = mean(values)
        return {"mean": round(m, 3), "std": round((sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5, 3),
                "min": min(values), "max": max(values)}  # fmt: skip

    keys = ("late_kurtosis_llama_over_fog", "growth_llama_over_fog", "max_window_gap_fog_fp8_vs_bf16",
            "mean_window_gap_fog_fp8_vs_bf16")  # fmt: skip
    print(json.dumps({"seeds": list(SEEDS), **{k: summary(k) for k in keys}}))
    late = [r["late_kurtosis_llama_over_fog"] for r in per_seed]
    # over the last 50 steps the baseline's qkv-input kurtosis is above FOG's in at least 4 of the 5 seeds, and never
    # clearly below it (2026-12-02, another CPU: 1.28-1.67 in seeds 0-3, 0.986 in seed 4; 2026-12-06: 1.07-1.51;
    # the per-seed values depend on the CPU's kernels, see docs/fog.md) ...
    assert sum(v > 1.0 for v in late) >= 4 and min(late) > 0.95, late
    for r in per_seed:
        # ... because it grows from the first 20 steps more than FOG's does, in every seed (observed 1.17-1.80, 1.21-1.56)
        assert r["growth_llama_over_fog"] > 1.1, r
        # FOG's FP8 loss tracks its BF16 loss: every 10-step window within 5%, on average within 2%
        assert r["max_window_gap_fog_fp8_vs_bf16"] < 0.05 and r["mean_window_gap_fog_fp8_vs_bf16"] < 0.02, r
    assert summary("late_kurtosis_llama_over_fog")["mean"] > 1.15  # observed 1.37, 1.33 over seeds 0-4
    assert summary("growth_llama_over_fog")["mean"] > 1.3  # observed 1.49, 1.42
