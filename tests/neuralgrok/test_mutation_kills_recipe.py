"""The neuralgrok recipe: which data and weight decay each method trains with, the --max_eval_samples test subset,
and the summary over seeds (censored step counts, the common complexity window)."""

import pytest

from hf_ext.recipes import neuralgrok as ng


def _run(seed, steps_to_target, steps_run, ages, steps):
    return {
        "seed": seed, "steps_to_target": steps_to_target, "steps_run": steps_run, "seconds_per_step": 0.1,
        "wall_seconds_to_target": None, "cpu_seconds_per_step": 0.1, "seconds_to_target": None,
        "cpu_seconds_to_target": None, "median_seconds_per_step": 0.1,
        "stability": {"accuracy_drops": 0, "loss_spikes": 0, "min_test_accuracy_after_target": None},
        "curves": {"train_step": steps, "age_raw": ages, "weight_norm": [1.0] * len(steps), "eval_step": steps,
                   "test": [0.5] * len(steps)},
    }  # fmt: skip


def test_a_seed_that_never_reaches_the_target_counts_with_its_budget():
    """steps_to_target_mean is a lower bound: an unreached seed enters with the steps it ran (docstring)."""
    runs = {"none": [_run(0, 4, 20, [1.0, 1.0], [10, 20]), _run(1, None, 20, [1.0, 1.0], [10, 20])]}
    res = ng.summarize(runs)["none"]
    assert res["reached"] == 1 and res["seeds"] == 2
    assert res["steps_to_target_mean"] == pytest.approx((4 + 20) / 2)
    assert res["median_steps_to_target"] is None  # the median of (4, never) is not a step count


def test_complexity_is_summarised_over_the_steps_every_run_has():
    """AGE means cover logged steps 1..(the shortest run's steps), so runs with other budgets compare alike."""
    runs = {
        "none": [_run(0, None, 10, [2.0, 4.0], [5, 10])],
        "normalize": [_run(0, None, 20, [1.0, 3.0, 100.0, 100.0], [5, 10, 15, 20])],
    }
    out = ng.summarize(runs)
    assert out["none"]["complexity_window"] == out["normalize"]["complexity_window"] == 10
    assert out["normalize"]["mean_age_raw_mean"] == pytest.approx(2.0)
    assert out["normalize"]["peak_age_raw_mean"] == pytest.approx(3.0)
    assert out["none"]["mean_age_raw_mean"] == pytest.approx(3.0)


TASK = ["--p", "11", "--hidden_size", "16", "--num_attention_heads", "2", "--seeds", "0",
        "--max_steps", "2", "--disable_tqdm", "true", "--report_to", "none", "--max_grad_norm", "0"]  # fmt: skip


@pytest.mark.parametrize("method", ["none", "none_strong_wd", "normalize"])
def test_each_method_trains_on_its_split_with_its_weight_decay(monkeypatch, tmp_path, method):
    """normalize (like neuralgrok) trains on D_inner, the training split minus the outer set; the baselines on the
    whole training split. none_strong_wd trains with --strong_weight_decay, the others with --weight_decay. The test
    set is the --max_eval_samples first equations of the held-out split."""
    import hf_ext.neuralgrok.trainer as trainer_mod

    seen = {}

    class Stop(Exception):
        pass

    def fake_init(self, model=None, args=None, train_dataset=None, eval_dataset=None, **kw):
        seen.update(args=args, train=train_dataset, test=eval_dataset)
        raise Stop

    monkeypatch.setattr(trainer_mod.NeuralGrokTrainer, "__init__", fake_init)
    extra = {"none": [], "none_strong_wd": ["--strong_weight_decay", "0.05"], "normalize": ["--outer_fraction", "0.1"]}
    extra = extra[method]
    with pytest.raises(Stop):
        ng.main([*TASK, "--methods", method, "--weight_decay", "0.002", "--max_eval_samples", "7", *extra,
                 "--output_dir", str(tmp_path / "out")])  # fmt: skip
    n = 11 * 10  # a+b mod 11: 110 equations (the docstring: p * (p - 1) rows for a binary task, 9312 at p = 97)
    train_size = int(0.5 * n)
    outer = int(0.1 * train_size)  # --outer_fraction of the training split
    assert len(seen["train"]) == (train_size - outer if method == "normalize" else train_size)
    assert len(seen["test"]) == 7
    assert seen["args"].weight_decay == (0.05 if method == "none_strong_wd" else 0.002)
    assert seen["args"].gradient_transform == ("normalize" if method == "normalize" else "none")
