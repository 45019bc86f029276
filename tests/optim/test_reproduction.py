"""Slow reproductions: warmup-free LionAR vs AdamW with/without warmup; cubic Newton with vs without momentum."""

import statistics

import pytest
import torch


@pytest.mark.slow
def test_warmup_gap_is_large_for_adamw_and_near_zero_for_lion_ar(tmp_path):
    """Per optimizer, the warmup gap = eval loss without warmup - eval loss with warmup, over the reproduction's seeds
    (the same runs and setting as `hf-ext reproduce warmup`): the paper's claim is that AdamW's is clearly positive
    (mean - sd > 0), LionAR's near zero and smaller than AdamW's. The reproduction's second claim (LionAR without
    warmup at least as good as AdamW with it) is reported, not asserted: a tie at this setting."""
    from hf_ext.recipes.warmup import warmup_claim_holds
    from hf_ext.reproduce import reproduce

    report = reproduce("warmup", output_dir=str(tmp_path), jobs=3)  # about 12 CPU-minutes per seed
    print(report.to_markdown())
    gaps = {k: [run["gaps"][k] for run in report.per_seed] for k in ("adamw", "lion_ar")}
    for k, v in gaps.items():
        per_seed = [round(x, 4) for x in v]
        print(f"{k:8s} warmup gap per seed {per_seed}  mean {statistics.mean(v):.4f} sd {statistics.stdev(v):.4f}")
    assert len(report.seeds) >= 3
    assert warmup_claim_holds(gaps["adamw"], gaps["lion_ar"]), gaps
    assert report.holds, report.to_markdown()


@pytest.mark.slow
def test_momentum_reaches_lower_gradient_norm_at_batch_one():
    """Batch-1 stochastic cubic Newton: the extrapolated momentum (our reading of the paper's; + Hessian EMA) lowers the
    gradient-norm plateau below plain stochastic cubic Newton on at least 4 of 5 seeds, and its median below 0.7x
    plain's; Adam with the same oracle budget is
    reported side by side (not asserted: it is about as good here, see docs/optim.md)."""
    from hf_ext.recipes.cubic_newton import _run, logistic_nonconvex_loss, make_a9a_like

    n, d, steps, seeds = 2000, 20, 300, range(5)
    A, y = make_a9a_like(n, d, seed=0)
    make = logistic_nonconvex_loss(A, y, 0.01)
    full = make(torch.arange(n))
    cfg = dict(
        sgd_lr=0.1,
        adam_lr=0.01,
        M=10.0,
        hessian="dense",
        solver="exact",
        krylov_dim=5,
        momentum_type="extrapolated",
        alpha=0.05,
        beta=0.05,
        eval_points=20,
    )
    tails = {}
    for method in ("cn", "cn_momentum", "adam"):
        runs = [_run(make, full, d, method, 1, 2 * steps, n, cfg, seed) for seed in seeds]
        assert all(r["rows"][-1]["oracle_calls"] == 2 * steps for r in runs)  # equal oracle budgets
        # batch-1 iterates jitter: average |grad f| over the last 5 of the 21 evaluations (steps 240-300)
        tails[method] = [statistics.mean(row["grad_norm"] for row in r["rows"][-5:]) for r in runs]
    for method, vals in tails.items():
        print(
            f"{method:12s} tail |grad f| per seed {[round(v, 3) for v in vals]}  "
            f"mean {statistics.mean(vals):.3f} sd {statistics.stdev(vals):.3f} median {statistics.median(vals):.3f}"
        )
    wins = sum(m < c for m, c in zip(tails["cn_momentum"], tails["cn"]))
    assert wins >= len(seeds) - 1, tails
    assert statistics.median(tails["cn_momentum"]) < 0.7 * statistics.median(tails["cn"]), tails
