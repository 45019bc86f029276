"""Slow reproductions: warmup-free LionAR vs AdamW with/without warmup; cubic Newton with vs without momentum."""

import statistics

import pytest
import torch

# the setting of the warmup reproduction (recorded with its numbers in docs/optim.md)
WARMUP_SETTING = dict(learning_rate="1e-1", max_steps="60", warmup_fraction="0.1")
WARMUP_SEEDS = (0, 1, 2)


def warmup_argv(out, seed):
    s = WARMUP_SETTING
    return [
        "--max_steps",
        s["max_steps"],
        "--learning_rate",
        s["learning_rate"],
        "--warmup_fraction",
        s["warmup_fraction"],
        "--arms",
        "adamw_warmup,adamw_no_warmup,lion_ar_warmup,lion_ar_no_warmup",
        "--hidden_size",
        "64",
        "--intermediate_size",
        "256",
        "--vocab_size",
        "512",
        "--block_size",
        "32",
        "--per_device_train_batch_size",
        "16",
        "--max_eval_blocks",
        "64",
        "--metrics_every",
        "1000",
        "--logging_steps",
        "50",
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
    ]


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="Not reproduced at CPU scale: in every setting tried (docs/optim.md, 'Warmup study') AdamW's warmup gap "
    "was not positive on every seed (3-seed mean -0.011 +- 0.018 here). Strict: an XPASS means the paper's ordering "
    "now holds and this marker must go.",
)
def test_warmup_gap_is_large_for_adamw_and_near_zero_for_lion_ar(tmp_path):
    """Per optimizer and seed, the warmup gap = eval loss without warmup - eval loss with warmup: the paper's claim is
    that AdamW's is clearly positive on every seed, LionAR's near zero and smaller than AdamW's."""
    from hf_ext.recipes.warmup import main, warmup_gaps

    gaps = {"adamw": [], "lion_ar": []}
    for seed in WARMUP_SEEDS:
        g = warmup_gaps(main(warmup_argv(tmp_path / f"seed{seed}", seed)))
        for k in gaps:
            gaps[k].append(g[k])
    for k, v in gaps.items():
        print(
            f"{k:8s} warmup gap per seed {[round(x, 4) for x in v]}  mean {statistics.mean(v):.4f} "
            f"sd {statistics.stdev(v):.4f}"
        )
    adamw, lion = gaps["adamw"], gaps["lion_ar"]
    assert min(adamw) > 0 and statistics.mean(adamw) > 0.02, gaps
    assert all(lg < ag for lg, ag in zip(lion, adamw)), gaps
    assert abs(statistics.mean(lion)) < 0.5 * statistics.mean(adamw), gaps


@pytest.mark.slow
def test_momentum_reaches_lower_gradient_norm_at_batch_one():
    """Batch-1 stochastic cubic Newton: the default momentum (extrapolated gradient + Hessian EMA) lowers the
    gradient-norm plateau below plain stochastic cubic Newton on every seed; Adam with the same oracle budget is
    reported side by side (not asserted: it is about as good here, see docs/optim.md)."""
    from hf_ext.optim import CubicNewton
    from hf_ext.recipes.cubic_newton import _run, logistic_nonconvex_loss, make_a9a_like

    assert CubicNewton([torch.nn.Parameter(torch.zeros(2))]).param_groups[0]["momentum"] == "extrapolated"
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
        # batch-1 iterates jitter: average |grad f| over the last quarter of the evaluations
        tails[method] = [statistics.mean(row["grad_norm"] for row in r["rows"][-5:]) for r in runs]
    for method, vals in tails.items():
        print(
            f"{method:12s} tail |grad f| per seed {[round(v, 3) for v in vals]}  "
            f"mean {statistics.mean(vals):.3f} sd {statistics.stdev(vals):.3f} median {statistics.median(vals):.3f}"
        )
    wins = sum(m < c for m, c in zip(tails["cn_momentum"], tails["cn"]))
    assert wins >= len(seeds) - 1, tails
    assert statistics.median(tails["cn_momentum"]) < 0.7 * statistics.median(tails["cn"]), tails
