"""Slow reproduction, one multi-seed measurement shared by three tests (docs/neuralgrok.md, "Measured"):

- issue 17.8: steps to 95% test accuracy for the Adam baseline, the normalisation-only control, Grokfast-EMA and
  NeuralGrok over 3 seeds; what the learned amplifier adds on top of normalisation;
- issue 17.9: mean step time (outer steps included) and training time to 95%;
- issue 23.3: absolute gradient entropy, weight norm and stability after grokking for the baseline, the baseline with
  strong weight decay and NeuralGrok.

The runs are `hf-ext reproduce neuralgrok` (setting and paper claims registered in `hf_ext.reproduce.methods`: the
recipe's defaults apart from CPU-budget knobs), one process per seed side by side, so that all methods of a seed share
the same machine load and their step times are comparable. On top of the registered claims, the checks below assert
what the recorded runs found (the amplifier adds nothing over the control; cost bounds). They are functions so that
the same assertions can be applied to a saved `neuralgrok_results.json`.
"""

import json
import os

import pytest

from hf_ext.recipes.neuralgrok import write_outputs
from hf_ext.reproduce import reproduce
from hf_ext.reproduce.methods import NEURALGROK_METHODS, neuralgrok_merged

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory):
    """`hf-ext reproduce neuralgrok --jobs 3`: the registered setting (hf_ext.reproduce.methods), seeds in parallel."""
    out = os.environ.get("NEURALGROK_REPRO_DIR") or str(tmp_path_factory.mktemp("neuralgrok_repro"))
    os.makedirs(out, exist_ok=True)
    report = reproduce("neuralgrok", seeds=list(SEEDS), output_dir=out, jobs=len(SEEDS))
    print(report.to_markdown())
    return report, out


@pytest.fixture(scope="module")
def results(reproduction):
    report, out = reproduction
    merged = neuralgrok_merged(report.per_seed)
    assert list(merged["methods"]) == list(NEURALGROK_METHODS) and merged["seeds"] == list(SEEDS)
    write_outputs(merged, out)
    print(f"outputs: {out}")
    return merged


def check_speed(results: dict) -> list[str]:
    """17.8: steps to 95% for baseline, control, Grokfast and NeuralGrok; what the learned amplifier adds.

    Recorded run (docs/neuralgrok.md): within the budgets only a minority of seeds reached 95%, so steps-to-target
    are mostly lower bounds and NeuralGrok's speed-up over the baseline did not reproduce at this scale. What held:
    at the common step budget the normalisation-only control is well ahead of the baseline, and NeuralGrok is
    indistinguishable from the control (the amplifier stays close to uniform in ~150 outer steps at meta-lr 1e-4).
    """
    m = results["methods"]
    ng, base, norm, gf = m["neuralgrok"], m["none"], m["normalize"], m["grokfast_ema"]
    window = ng["complexity_window"]

    def steps(res):
        return f"{res['steps_to_target_mean']:.0f}±{res['steps_to_target_std']:.0f} ({res['reached']}/{res['seeds']})"

    def acc(res):
        return f"{res['test_accuracy_at_window_mean']:.3f}±{res['test_accuracy_at_window_std']:.3f}"

    report = [
        f"steps to 95% (mean±sd, reached): baseline {steps(base)}, normalize {steps(norm)}, grokfast {steps(gf)}, "
        f"NeuralGrok {steps(ng)}",
        f"test accuracy at step {window}: baseline {acc(base)}, normalize {acc(norm)}, grokfast {acc(gf)}, "
        f"NeuralGrok {acc(ng)}",
        f"reported, not asserted: NeuralGrok reaches 95% in fewer steps than the baseline: "
        f"{ng['steps_to_target_mean'] < base['steps_to_target_mean'] and ng['reached'] == ng['seeds']}",
    ]
    # normalisation alone (same scale and clip as NeuralGrok) generalises earlier than the baseline
    assert norm["test_accuracy_at_window_mean"] > base["test_accuracy_at_window_mean"] + 0.1
    # the learned amplifier adds nothing measurable on top of the control at this budget
    assert abs(ng["test_accuracy_at_window_mean"] - norm["test_accuracy_at_window_mean"]) < 0.05
    return report


def check_cost(results: dict) -> list[str]:
    """17.9: mean step time (outer steps included) and training time to 95%. The per-step goal (<= 1.5x) was not
    met: 2.3x in CPU time, 1.6x in wall-clock under load in the recorded run.

    Wall-clock step times on a heavily shared machine move with other jobs' load, so the per-step bound is asserted
    on CPU time of the process (one torch thread). Time to 95% is reported (lower bounds where a seed did not reach
    it): NeuralGrok did not reach 95% within its budget in the recorded run, so the goal "less wall-clock to 95% than
    the baseline" was not met at this scale.
    """
    m = results["methods"]
    ng, base, norm = m["neuralgrok"], m["none"], m["normalize"]
    report = [
        f"mean s/step: baseline {base['seconds_per_step_mean']:.4f}, normalize {norm['seconds_per_step_mean']:.4f}, "
        f"NeuralGrok {ng['seconds_per_step_mean']:.4f} ({ng['cost_per_step_vs_none']:.2f}x); CPU s/step "
        f"{base['cpu_seconds_per_step_mean']:.4f}, {norm['cpu_seconds_per_step_mean']:.4f}, "
        f"{ng['cpu_seconds_per_step_mean']:.4f} ({ng['cpu_cost_per_step_vs_none']:.2f}x)",
        f"training s to 95% (lower bounds where not reached): baseline {base['seconds_to_target_mean']:.1f}, "
        f"NeuralGrok {ng['seconds_to_target_mean']:.1f}; CPU s: {base['cpu_seconds_to_target_mean']:.1f} vs "
        f"{ng['cpu_seconds_to_target_mean']:.1f}",
    ]
    # The goal is 1.5x; the recorded run measured 2.3x in CPU time (docs: what limits it), so only a regression
    # bound is asserted here.
    assert ng["cpu_cost_per_step_vs_none"] < 3.0
    # the control costs little more than the baseline: the overhead is the amplifier, not the rescaling
    assert norm["cpu_cost_per_step_vs_none"] < 1.3
    return report


def check_complexity_and_stability(results: dict) -> list[str]:
    """23.3: the orderings that held in the recorded run are asserted; the others are only reported."""
    m = results["methods"]
    ng, base, wd = m["neuralgrok"], m["none"], m["none_strong_wd"]
    window = ng["complexity_window"]
    report = [
        f"mean raw-gradient AGE over steps 1..{window}: baseline {base['mean_age_raw_mean']:.0f}, strong wd "
        f"{wd['mean_age_raw_mean']:.0f}, NeuralGrok {ng['mean_age_raw_mean']:.0f} (reported: NeuralGrok lower than "
        f"baseline: {ng['mean_age_raw_mean'] < base['mean_age_raw_mean']})",
        f"final weight norm: baseline {base['final_weight_norm_mean']:.1f}, strong wd {wd['final_weight_norm_mean']:.1f}, "
        f"NeuralGrok {ng['final_weight_norm_mean']:.1f}",
        f"accuracy drops / loss spikes after 95% (seeds that reached it): baseline {base['accuracy_drops_mean']} / "
        f"{base['loss_spikes_mean']}, strong wd {wd['accuracy_drops_mean']}, NeuralGrok {ng['accuracy_drops_mean']}",
    ]
    # strong (10x) weight decay keeps the weights far smaller ...
    assert wd["final_weight_norm_mean"] < 0.5 * base["final_weight_norm_mean"]
    # ... and, as in the paper's wd 1e-2 ablation, the model neither memorises nor generalises within the budget
    assert wd["reached"] == 0 and wd["test_accuracy_at_window_mean"] < 0.05
    return report


@pytest.mark.slow
def test_registered_claims_hold(reproduction):
    report, _ = reproduction
    assert len(report.seeds) >= 3 and report.holds, report.to_markdown()


@pytest.mark.slow
def test_speed_of_neuralgrok_and_the_normalisation_control(results):
    print("\n".join(check_speed(results)))


@pytest.mark.slow
def test_cost_per_step_and_time_to_target(results):
    print("\n".join(check_cost(results)))


@pytest.mark.slow
def test_gradient_entropy_weight_norm_and_stability(results):
    print("\n".join(check_complexity_and_stability(results)))


if __name__ == "__main__":  # re-check the assertions on a saved run: python test_reproduction.py results.json
    import sys

    saved = json.load(open(sys.argv[1], encoding="utf-8"))
    for check in (check_speed, check_cost, check_complexity_and_stability):
        try:
            print(check.__name__, "OK", check(saved))
        except AssertionError as err:
            print(check.__name__, "FAILED", err)
