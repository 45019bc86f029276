"""Slow reproduction of the paper's quality shape on a small Llama trained until its depth matters.

A 6-layer Llama (hidden 48, GQA 4/2, byte-level BPE with 512 tokens, blocks of 32 tokens) is trained for 1200 AdamW
steps on the embedded corpus (held-out perplexity ≈ 14, against ≈ 512 for a uniform guess), for 3 seeds. Every
range of every pair count is then converted and evaluated with `perplexity_sweep`. Asserted, per seed and on the
mean over seeds: perplexity grows with the number of pairs, and pairs of late layers hurt less than pairs of early
ones, even leaving out layer 0. Numbers in docs/layer_parallel.md. A few CPU minutes per seed.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

SEEDS = (0, 1, 2)
NUM_LAYERS, STEPS, BLOCK, BATCH, EVAL_BLOCKS = 6, 1200, 32, 32, 64


def train_and_sweep(seed: int) -> list[dict]:
    """Train the small Llama with `seed`, then return the rows of `perplexity_sweep` over every range."""
    from hf_ext.data import build_tokenizer, load_corpus
    from hf_ext.data.packing import pack_dataset
    from hf_ext.models.layer_parallel.sweep import perplexity_sweep

    tokenizer = build_tokenizer(512)
    train = pack_dataset(load_corpus("train"), tokenizer, block_size=BLOCK)
    test = pack_dataset(load_corpus("test"), tokenizer, block_size=BLOCK)
    test = test.select(range(min(EVAL_BLOCKS, len(test))))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))

    def schedule(step: int) -> float:  # 50 warm-up steps, then cosine to 0
        return min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(step, STEPS) / STEPS))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    blocks = torch.tensor(train["input_ids"])
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(STEPS):
        batch = blocks[torch.randint(0, len(blocks), (BATCH,), generator=gen)]
        model(input_ids=batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.eval()
    return perplexity_sweep(model, test, progress=False)


def summarize(rows: list[dict]) -> dict:
    """Source perplexity, best and mean perplexity per pair count, single-pair perplexity per start layer."""
    by_count: dict[int, list[float]] = {}
    for r in rows[1:]:
        by_count.setdefault(r["pairs"], []).append(r["perplexity"])
    return {
        "source": rows[0]["perplexity"],
        "best": {n: min(v) for n, v in sorted(by_count.items())},
        "mean": {n: statistics.fmean(v) for n, v in sorted(by_count.items())},
        "single": {r["start"]: r["perplexity"] for r in rows[1:] if r["pairs"] == 1},
    }


def check_shape(summary: dict) -> None:
    """The paper's shape. More pairs: higher best and mean perplexity (0 pairs = the source). Position: the mean of
    the two latest single pairs is below the pair (1, 2), which is below the pair (0, 1), and the pair (1, 2) already
    costs more than 5 % (so the effect is not all in layer 0)."""
    counts = sorted(summary["best"])
    best = [summary["source"]] + [summary["best"][n] for n in counts]
    mean = [summary["source"]] + [summary["mean"][n] for n in counts]
    assert all(a < b for a, b in zip(best, best[1:])), best
    assert all(a < b for a, b in zip(mean, mean[1:])), mean
    single = summary["single"]
    late = statistics.fmean([single[NUM_LAYERS - 2], single[NUM_LAYERS - 3]])
    assert late < single[1] < single[0], single
    assert single[1] > 1.05 * summary["source"], (single, summary["source"])


@pytest.mark.slow
def test_quality_shape_over_three_seeds():
    summaries = [summarize(train_and_sweep(seed)) for seed in SEEDS]
    for summary in summaries:
        check_shape(summary)
    mean_summary = {
        "source": statistics.fmean(s["source"] for s in summaries),
        **{
            key: {k: statistics.fmean(s[key][k] for s in summaries) for k in summaries[0][key]}
            for key in ("best", "mean", "single")
        },
    }
    check_shape(mean_summary)
    print(json.dumps({"per_seed": summaries, "mean": mean_summary}, indent=1))
