"""scripts/bench_neuralgrok.py: interleaved rounds of the four runners, ratios to the same round's baseline."""

import os
import runpy

import pytest


@pytest.fixture(scope="module")
def bench(repo_root):
    return runpy.run_path(os.path.join(repo_root, "scripts", "bench_neuralgrok.py"))


def test_tiny_bench_rotates_the_order_and_reports_ratios(bench, capsys):
    summary = bench["main"](["--tiny", "--rounds", "2", "--", "--num_hidden_layers", "1"])
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('{"round"')]
    assert len(rows) == 2 and summary["rounds"] == 2 and summary["steps"] == 8
    assert '"order": ["none", "normalize", "neuralgrok", "neuralgrok_next_step"]' in rows[0]
    assert '"order": ["normalize", "neuralgrok", "neuralgrok_next_step", "none"]' in rows[1]
    assert summary["recipe_args"][-2:] == ["--num_hidden_layers", "1"]
    for method in ("normalize", "neuralgrok", "neuralgrok_next_step"):
        ratio = summary[f"{method}_cpu_ratio"]
        assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
    assert summary["neuralgrok_cpu_s_per_step"]["mean"] > 0


def test_bench_rejects_too_few_steps(bench):
    with pytest.raises(SystemExit):
        bench["main"](["--steps", "3"])


def test_reproduction_runs_baseline_and_neuralgrok_back_to_back_and_merges_in_canonical_order(monkeypatch):
    """The runs whose cost ratios are claims are adjacent to the baseline, in an order reversed from seed to seed (a
    process's later runs tend to be slower, and NeuralGrok used to run last on every seed); the merged table keeps the
    canonical order."""
    from hf_ext.recipes import neuralgrok as recipe
    from hf_ext.reproduce import methods

    orders = [methods.neuralgrok_run_order(seed) for seed in range(4)]
    first = ("neuralgrok", "none", "neuralgrok_next_step")
    assert [o[:3] for o in orders] == [first, first[::-1]] * 2
    assert all(sorted(o) == sorted(methods.NEURALGROK_METHODS) for o in orders)
    seen = []
    monkeypatch.setattr(recipe, "merge_results", lambda parts: seen.append(parts) or parts)
    runs = [{"parts": [{"methods": {m: seed}} for m in methods.neuralgrok_run_order(seed)]} for seed in (0, 1)]
    merged = methods.neuralgrok_merged(runs)
    assert [next(iter(p["methods"])) for p in merged[::2]] == list(methods.NEURALGROK_METHODS)
    assert [next(iter(p["methods"].values())) for p in merged] == [0, 1] * len(methods.NEURALGROK_METHODS)


def test_reproduction_runs_the_next_step_variant_with_its_option_and_records_it_under_its_name(monkeypatch, tmp_path):
    from hf_ext.reproduce import methods

    calls = []

    def fake_recipe(name, argv):
        calls.append(argv)
        method = argv[argv.index("--methods") + 1]
        return {"methods": {method: {"argv": argv}}}

    monkeypatch.setattr(methods, "_quiet_recipe", fake_recipe)
    parts = methods._neuralgrok_run(seed=1, fast=True, workdir=str(tmp_path))["parts"]
    recorded = {name: res["argv"] for part in parts for name, res in part["methods"].items()}
    assert sorted(recorded) == sorted(methods.NEURALGROK_METHODS)
    variant = recorded["neuralgrok_next_step"]
    assert variant[variant.index("--methods") + 1] == "neuralgrok"
    assert variant[variant.index("--outer_gradient") + 1] == "next_step"
    assert variant[variant.index("--output_dir") + 1].endswith("neuralgrok_next_step")
    assert "--outer_gradient" not in recorded["neuralgrok"] and len(calls) == len(methods.NEURALGROK_METHODS)
