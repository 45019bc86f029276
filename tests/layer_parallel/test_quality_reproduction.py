"""Slow reproduction of the paper's quality shape on a small Llama trained until its depth matters.

A 6-layer Llama (hidden 48, GQA 4/2, byte-level BPE with 512 tokens, blocks of 32 tokens) is trained for 1200 AdamW
steps on the embedded corpus (held-out perplexity ≈ 14, against ≈ 512 for a uniform guess), for 3 seeds. Every
range of every pair count is then converted and evaluated with `perplexity_sweep`. Asserted, per seed and on the
mean over seeds: perplexity grows with the number of pairs, and pairs of late layers hurt less than pairs of early
ones, even leaving out layer 0. Numbers in docs/layer_parallel.md. A few CPU minutes per seed.
"""

from __future__ import annotations

import json
import statistics

import pytest

from hf_ext.reproduce.methods import LP_LAYERS as NUM_LAYERS
from hf_ext.reproduce.methods import summarize_sweep as summarize
from hf_ext.reproduce.methods import train_and_sweep

SEEDS = (0, 1, 2)


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
