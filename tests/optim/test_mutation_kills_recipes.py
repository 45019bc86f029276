"""What the warmup and cubic Newton recipes hand to each arm / method, and what they report: per-arm learning rate,
weight decay, warmup and rotation angle, the shared initialisation, the warmup gap, the oracle-call accounting and
the seeded data of the logistic problem."""

from __future__ import annotations

import math

import pytest
import torch

WARMUP_TINY = [
    "--hidden_size", "32", "--intermediate_size", "64", "--vocab_size", "512", "--block_size", "32",
    "--max_eval_blocks", "2", "--per_device_train_batch_size", "4", "--metrics_every", "1", "--disable_tqdm", "true",
    "--use_cpu", "true",
]  # fmt: skip


def _arm_args(*argv):
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments, arm_arguments

    recipe, args = parse_recipe_args(
        (WarmupRecipeArguments, WarmupTrainingArguments), ["--output_dir", "unused", *argv], resume="keep"
    )
    return {arm: arm_arguments(arm, recipe, args) for arm in recipe.arms.split(",")}


def test_each_warmup_arm_gets_its_learning_rate_weight_decay_warmup_and_angle():
    """AdamW arms train at --learning_rate / --weight_decay; Lion arms at lr x ratio and wd / ratio; only *_warmup
    arms warm up; the LionAR angle is AdamW's equilibrium angle sqrt(2 lr wd (1-b1)/(1+b1)) at --adam_beta1."""
    arms = _arm_args(
        "--arms", "adamw_warmup,adamw_no_warmup,lion_ar_warmup,lion_ar_no_warmup", "--learning_rate", "0.02",
        "--weight_decay", "0.3", "--lion_lr_ratio", "0.25", "--warmup_fraction", "0.2", "--adam_beta1", "0.5",
    )  # fmt: skip
    assert arms["adamw_warmup"].warmup_steps == 0.2 and arms["lion_ar_warmup"].warmup_steps == 0.2
    assert arms["adamw_no_warmup"].warmup_steps == 0 and arms["lion_ar_no_warmup"].warmup_steps == 0
    for name in ("adamw_warmup", "adamw_no_warmup"):
        assert arms[name].learning_rate == pytest.approx(0.02)
        assert arms[name].weight_decay == pytest.approx(0.3)
    angle = math.sqrt(2 * 0.02 * 0.3 * (1 - 0.5) / (1 + 0.5))
    for name in ("lion_ar_warmup", "lion_ar_no_warmup"):
        assert arms[name].normalized_optimizer == "lion_ar"
        assert arms[name].learning_rate == pytest.approx(0.02 * 0.25)
        assert arms[name].weight_decay == pytest.approx(0.3 / 0.25)
        assert arms[name].rotation_angle == pytest.approx(angle)


def test_warmup_gap_is_no_warmup_minus_warmup():
    """A positive gap means warmup helped (the no-warmup arm ends at a higher eval loss)."""
    from hf_ext.recipes.warmup import warmup_gaps

    results = {
        "adamw_warmup": {"eval_loss": 3.0},
        "adamw_no_warmup": {"eval_loss": 3.5},
        "lion_ar_warmup": {"eval_loss": 2.0},
        "lion_ar_no_warmup": {"eval_loss": 1.75},
        "lion_a_warmup": {"eval_loss": 1.0},  # no lion_a_no_warmup: no gap
    }
    assert warmup_gaps(results) == pytest.approx({"adamw": 0.5, "lion_ar": -0.25})


def test_every_warmup_arm_starts_from_the_same_initialisation(tmp_path):
    """Arms differ only in optimizer and schedule: with the same --seed and data, their first-step training losses
    (measured before any update) are equal."""
    from hf_ext.recipes.warmup import main

    res = main(
        [*WARMUP_TINY, "--arms", "adamw_warmup,lion_ar_no_warmup", "--max_steps", "1", "--logging_steps", "1",
         "--output_dir", str(tmp_path)]  # fmt: skip
    )
    (step_a, loss_a), (step_b, loss_b) = res["adamw_warmup"]["train_loss"][0], res["lion_ar_no_warmup"]["train_loss"][0]
    assert step_a == step_b == 1
    assert loss_a == pytest.approx(loss_b, rel=1e-6)


CUBIC_TINY = ["--problems", "logistic", "--batch_sizes", "1", "--n_samples", "60", "--n_features", "14"]


def test_cubic_methods_spend_the_same_oracle_budget_and_report_the_last_step(tmp_path):
    """A cubic step at batch 1 costs 2 oracle calls (gradient + Hessian sample), an SGD step 1: with a budget of 20 SGD
    takes 20 steps and cubic Newton 10, both end at 20 calls, and the last step is always evaluated."""
    from hf_ext.recipes.cubic_newton import main

    res = main([*CUBIC_TINY, "--methods", "sgd,cn", "--oracle_budget", "20", "--eval_points", "3",
                "--output_dir", str(tmp_path)])  # fmt: skip
    rows = {r["method"]: r["rows"] for r in res}
    assert [r["step"] for r in rows["sgd"]] == [0, 6, 12, 18, 20]
    assert [r["oracle_calls"] for r in rows["sgd"]] == [0, 6, 12, 18, 20]
    assert [r["step"] for r in rows["cn"]] == [0, 3, 6, 9, 10]
    assert [r["oracle_calls"] for r in rows["cn"]] == [0, 6, 12, 18, 20]


def test_logistic_objective_is_the_nonconvex_regularised_logistic_loss():
    """f(x) = mean log(1 + exp(-y a.x)) + lam sum x^2 / (1 + x^2), checked in closed form on a hand-made batch."""
    from hf_ext.recipes.cubic_newton import logistic_nonconvex_loss

    A = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    x = torch.tensor([2.0, -1.0], dtype=torch.float64)
    f = logistic_nonconvex_loss(A, y, 0.5)(torch.tensor([0, 1, 2]))
    margins = [1 * 2.0, -1 * 1.0, 1 * -1.0]
    expected = sum(math.log1p(math.exp(-m)) for m in margins) / 3 + 0.5 * (4 / 5 + 1 / 2)
    assert float(f(x)) == pytest.approx(expected, rel=1e-12)


def test_seed_selects_the_logistic_data_and_sample_order(tmp_path):
    """--seed draws the a9a-like data and the mini-batch indices: SGD at batch 1 is replayed here step by step in
    float64 from `make_a9a_like(..., seed)` and a generator seeded with --seed."""
    from hf_ext.recipes.cubic_newton import main, make_a9a_like

    seed, lr, steps, lam = 7, 0.5, 12, 0.01
    res = main([*CUBIC_TINY, "--methods", "sgd", "--oracle_budget", str(steps), "--eval_points", "1", "--sgd_lr",
                str(lr), "--seed", str(seed), "--output_dir", str(tmp_path)])  # fmt: skip
    A, y = make_a9a_like(60, 14, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(14, dtype=torch.float64)
    for _ in range(steps):
        i = int(torch.randint(0, 60, (1,), generator=g))
        margin = float(y[i] * (A[i] @ x))
        grad = -y[i] * A[i] / (1 + math.exp(margin)) + lam * 2 * x / (1 + x**2) ** 2
        x = x - lr * grad
    full = torch.nn.functional.softplus(-y * (A @ x)).mean() + lam * (x**2 / (1 + x**2)).sum()
    last = res[0]["rows"][-1]
    assert last["step"] == steps
    assert last["loss"] == pytest.approx(float(full), rel=1e-10)
