"""scripts/bench_neuralgrok.py: interleaved rounds of the three methods, ratios to the same round's baseline."""

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
    assert '"order": ["none", "normalize", "neuralgrok"]' in rows[0]
    assert '"order": ["normalize", "neuralgrok", "none"]' in rows[1]
    assert summary["recipe_args"][-2:] == ["--num_hidden_layers", "1"]
    for method in ("normalize", "neuralgrok"):
        ratio = summary[f"{method}_cpu_ratio"]
        assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
    assert summary["neuralgrok_cpu_s_per_step"]["mean"] > 0


def test_bench_rejects_too_few_steps(bench):
    with pytest.raises(SystemExit):
        bench["main"](["--steps", "3"])
