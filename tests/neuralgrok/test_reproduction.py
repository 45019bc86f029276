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

    Recorded runs (docs/neuralgrok.md, "Measured at the recipe defaults"): NeuralGrok and the normalisation-only control
    both reach 95% on every seed in about half the baseline's steps (the paper's 1.8x), and NeuralGrok is no faster
    than the control: the speed-up is the normalisation's, the learned amplifier adds nothing measurable here.
    """
    m = results["methods"]
    ng, base, norm, gf = m["neuralgrok"], m["none"], m["normalize"], m["grokfast_ema"]

    def steps(res):
        return f"{res['steps_to_target_mean']:.0f}±{res['steps_to_target_std']:.0f} ({res['reached']}/{res['seeds']})"

    report = [
        f"steps to 95% (mean±sd, reached): baseline {steps(base)}, normalize {steps(norm)}, grokfast {steps(gf)}, "
        f"NeuralGrok {steps(ng)}",
    ]
    assert base["reached"] == base["seeds"], "the baseline must grok within the budget for a step comparison"
    for res in (ng, norm):  # both groks on every seed, in clearly fewer steps than the baseline
        assert res["reached"] == res["seeds"]
        assert res["steps_to_target_mean"] < 0.8 * base["steps_to_target_mean"]
    # the learned amplifier adds nothing measurable on top of the control (within 25% of its steps)
    assert abs(ng["steps_to_target_mean"] - norm["steps_to_target_mean"]) < 0.25 * norm["steps_to_target_mean"]
    return report


def check_cost(results: dict) -> list[str]:
    """17.9: mean step time (outer steps included) and training time to 95%. The goal is <= 1.5x the baseline per step;
    only a regression bound is asserted (docs/neuralgrok.md, "Cost": what it measures and what limits it).

    Wall-clock step times on a shared machine move with other jobs' load, so the bounds are on CPU time of the process
    (one torch thread). NeuralGrok needs fewer steps, so its training time to 95% is compared too (reported)."""
    m = results["methods"]
    ng, base, norm = m["neuralgrok"], m["none"], m["normalize"]
    report = [
        f"mean s/step: baseline {base['seconds_per_step_mean']:.4f}, normalize {norm['seconds_per_step_mean']:.4f}, "
        f"NeuralGrok {ng['seconds_per_step_mean']:.4f} ({ng['cost_per_step_vs_none']:.2f}x); CPU s/step "
        f"{base['cpu_seconds_per_step_mean']:.4f}, {norm['cpu_seconds_per_step_mean']:.4f}, "
        f"{ng['cpu_seconds_per_step_mean']:.4f} ({ng['cpu_cost_per_step_vs_none']:.2f}x)",
        f"training s to 95%: baseline {base['seconds_to_target_mean']:.1f}, normalize "
        f"{norm['seconds_to_target_mean']:.1f}, NeuralGrok {ng['seconds_to_target_mean']:.1f}; CPU s: "
        f"{base['cpu_seconds_to_target_mean']:.1f}, {norm['cpu_seconds_to_target_mean']:.1f}, "
        f"{ng['cpu_seconds_to_target_mean']:.1f}",
    ]
    nxt = m["neuralgrok_next_step"]
    report.append(
        f"outer_gradient=next_step: CPU s/step {nxt['cpu_seconds_per_step_mean']:.4f} "
        f"({nxt['cpu_cost_per_step_vs_none']:.2f}x), CPU s to 95% {nxt['cpu_seconds_to_target_mean']:.1f}"
    )
    # regression bound: measured 1.48-1.62 per seed with the piecewise-linear amplifier (the goal is 1.5), 2.3 before
    assert ng["cpu_cost_per_step_vs_none"] < 1.8
    # without the recomputed gradient the goal holds (also a registered claim)
    assert nxt["cpu_cost_per_step_vs_none"] <= 1.5 and nxt["reached"] == nxt["seeds"]
    assert nxt["cpu_seconds_to_target_mean"] < base["cpu_seconds_to_target_mean"]
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
