"""`hf-ext reproduce` and `hf-ext env`; the slow tests run every registered reproduction at its default seeds."""

from __future__ import annotations

import json

import pytest

from hf_ext.cli import main
from hf_ext.reproduce import Claim, Reproduction, available_methods, reproduce
from hf_ext.reproduce.methods import REPRODUCTIONS


def test_env_lists_versions_and_devices(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for key in ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "torchao", "transformer_engine"):
        assert f"- {key}: " in out
    assert "- CUDA available: " in out and "- python: " in out


def test_reproduce_judges_claims_over_seeds(monkeypatch, tmp_path):
    """Seeds reach the run, the judge sees every seed's result, the table shows mean/spread and the verdict."""
    seen = []

    def run(seed, fast, workdir):
        seen.append((seed, fast))
        return {"gap": 0.1 * (seed + 1)}

    def judge(runs):
        gaps = [r["gap"] for r in runs]
        return f"{sum(gaps) / len(gaps):.2f}", min(gaps) > 0.15

    spec = Reproduction("toy", "a toy claim", run, [Claim("gap is positive", "0.2", judge)], default_seeds=3)
    monkeypatch.setitem(REPRODUCTIONS, "toy", spec)
    report = reproduce("toy", seeds=[1, 2], fast=True, output_dir=str(tmp_path))
    assert seen == [(1, True), (2, True)]
    assert report.rows[0].ours == "0.25" and report.rows[0].verdict == "holds" and report.holds
    assert "| gap is positive | 0.2 | 0.25 | holds |" in (tmp_path / "reproduction.md").read_text()
    spec.claims[0].paper = "c*g/||g||"  # a literal pipe must not split the table's cells
    assert "| c*g/\\|\\|g\\|\\| | 0.25 |" in reproduce("toy", seeds=[1, 2]).to_markdown()
    spec.claims[0].paper = "0.2"
    assert json.loads((tmp_path / "reproduction.json").read_text())["seeds"] == [1, 2]
    seen.clear()
    assert not reproduce("toy").holds  # default seeds 0, 1, 2: seed 0's gap 0.1 fails the judge
    assert [s for s, _ in seen] == [0, 1, 2]
    spec.claims[0].asserted = False  # a claim known not to reproduce is reported, not required
    report = reproduce("toy")
    # with no asserted claim left nothing is tested: "reported only", never a vacuous "holds"
    assert report.holds is None and report.verdict == "reported only"
    assert "does not hold (reported, not asserted)" in report.to_markdown()
    assert "Verdict: reported only" in report.to_markdown()
    with pytest.raises(ValueError, match="Unknown method"):
        reproduce("nope")
    with pytest.raises(ValueError, match="--seeds"):
        reproduce("toy", seeds=0)


def test_rejudge_a_saved_reproduction_with_the_current_claims(monkeypatch, tmp_path):
    from hf_ext.reproduce import rejudge

    def judge(runs):
        return f"{sum(r['gap'] for r in runs):.1f}", True

    spec = Reproduction("toy_re", "rejudged", lambda seed, fast, workdir: {"gap": seed}, [Claim("c1", "-", judge)])
    monkeypatch.setitem(REPRODUCTIONS, "toy_re", spec)
    first = reproduce("toy_re", seeds=[1, 2], output_dir=str(tmp_path))
    spec.claims = [*spec.claims, Claim("c2 (added later)", "-", lambda runs: ("3 runs?", len(runs) == 3))]
    again = rejudge(str(tmp_path))  # no run: the saved per-seed results are judged again
    assert [r.claim for r in again.rows] == ["c1", "c2 (added later)"] and not again.holds
    assert again.per_seed == first.per_seed and again.seconds == first.seconds and again.seeds == [1, 2]
    assert "| c2 (added later) | - | 3 runs? | does not hold |" in (tmp_path / "reproduction.md").read_text()
    assert json.loads((tmp_path / "reproduction.json").read_text())["rows"][1]["claim"] == "c2 (added later)"
    with pytest.raises(ValueError, match="not a reproduction"):
        rejudge(str(tmp_path / "missing"))


def test_seeds_in_parallel_processes_give_the_same_table(monkeypatch, tmp_path, repo_root):
    """--jobs N runs seeds in separate processes; the per-seed results come back in seed order."""
    import os

    # the spawned workers unpickle `seed_run` from tests/reproduce_stub_runs.py (a light module: the workers start in
    # a second, where importing this module took each worker the whole hf_ext import): they need the repository root
    # on their path, which `python -m pytest` gives and a bare `pytest` does not
    monkeypatch.syspath_prepend(repo_root)
    from tests.reproduce_stub_runs import seed_run

    def judge(runs):
        return ",".join(str(r["seed"]) for r in runs), True

    spec = Reproduction("toy_jobs", "parallel seeds", seed_run, [Claim("seeds in order", "-", judge)])
    monkeypatch.setitem(REPRODUCTIONS, "toy_jobs", spec)
    report = reproduce("toy_jobs", seeds=[3, 1, 2], jobs=2, output_dir=str(tmp_path))
    assert report.rows[0].ours == "3,1,2" and [r["seed"] for r in report.per_seed] == [3, 1, 2]
    pids = {r["pid"] for r in report.per_seed}
    assert os.getpid() not in pids and len(pids) <= 2
    assert all((tmp_path / f"seed{s}" / "ran").is_file() for s in (1, 2, 3))
    assert {r["pid"] for r in reproduce("toy_jobs", seeds=2).per_seed} == {os.getpid()}  # jobs=1: in process
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="--jobs"):
            reproduce("toy_jobs", seeds=2, jobs=bad)


def test_jobs_no_seed_starts_after_one_failed_in_real_processes(monkeypatch, tmp_path, repo_root):
    """ev17: all seeds were submitted up front, and ProcessPoolExecutor moves submitted items into its call queue
    ahead of time, where cancel_futures cannot reach them: after seed 0 failed, queued seeds 2.. still started and ran
    in full. A real spawned pool (a thread pool queues nothing ahead and cannot show it)."""
    monkeypatch.syspath_prepend(repo_root)  # the workers import the stub run by name (see the test above)
    from tests.reproduce_stub_runs import failing_seed_run, mark_pool_shutdown  # a light module (see above)

    mark_pool_shutdown(monkeypatch, tmp_path)  # seed 1 runs until the failure came back and the pool shuts down
    spec = Reproduction("toy_fail_procs", "-", failing_seed_run, [Claim("c", "-", judge_ok)])
    monkeypatch.setitem(REPRODUCTIONS, "toy_fail_procs", spec)
    with pytest.raises(RuntimeError, match="seed 0 failed"):
        reproduce("toy_fail_procs", seeds=6, jobs=2, output_dir=str(tmp_path))
    assert (tmp_path / "failed0").is_file()
    started = sorted(int(p.name[7:]) for p in tmp_path.glob("started*"))
    finished = sorted(int(p.name[8:]) for p in tmp_path.glob("finished*"))
    assert started == [0, 1], started  # seeds 2..5 never start: only seed 1 ran beside seed 0
    assert finished == [1]  # the running seed finishes before the failure raises
    assert not (tmp_path / "reproduction.json").exists()


def test_duplicate_seeds_and_a_file_as_output_dir_are_refused_before_any_run(monkeypatch, tmp_path):
    """Two runs of one seed shared its folder (and counted twice); a file as --output_dir failed with an OSError."""
    ran = []
    spec = Reproduction(
        "toy_bad", "-", lambda seed, fast, workdir: ran.append(seed) or {}, [Claim("c", "-", judge_ok)]
    )
    monkeypatch.setitem(REPRODUCTIONS, "toy_bad", spec)
    with pytest.raises(ValueError, match="distinct"):
        reproduce("toy_bad", seeds=[1, 1], output_dir=str(tmp_path / "dup"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="--output_dir"):
        reproduce("toy_bad", seeds=2, output_dir=str(blocker))
    assert ran == [] and not (tmp_path / "dup").exists()


def judge_ok(runs):
    return "-", True


def test_cli_lists_and_runs_a_fast_reproduction(capsys, tmp_path):
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in available_methods())
    rc = main(["reproduce", "grape", "--fast", "--seeds", "1", "--output_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| claim | paper | ours" in out and "grape" in out
    saved = json.loads((tmp_path / "reproduction.json").read_text())
    assert len(saved["rows"]) == len(REPRODUCTIONS["grape"].claims) == 4 and saved["fast"] is True
    assert rc == (0 if all(r["verdict"] == "holds" for r in saved["rows"] if r["asserted"]) else 1)
    assert (tmp_path / "reproduction.md").is_file() and (tmp_path / "seed0" / "uniform").is_dir()
    with pytest.raises(SystemExit):
        main(["reproduce", "no_such_method"])


#: methods whose own slow test runs the same `reproduce()` (with its seeds in parallel and extra checks)
OWN_SLOW_TEST = {
    "federated": "tests/federated/test_reproduction.py",
    "neuralgrok": "tests/neuralgrok/test_reproduction.py",
    "warmup": "tests/optim/test_reproduction.py",
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(set(REPRODUCTIONS) - set(OWN_SLOW_TEST)))
def test_reproduction_holds(method, tmp_path):
    report = reproduce(method, output_dir=str(tmp_path))
    print(report.to_markdown())
    assert len(report.seeds) >= 3
    if any(c.asserted for c in REPRODUCTIONS[method].claims):
        assert report.holds, report.to_markdown()
    else:  # nothing asserted (grape_corpus): "holds" would be vacuous; check that every number was computed instead
        assert_reported_only_report_is_complete(report)


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, int | float):
        yield float(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _numbers(v)


def assert_reported_only_report_is_complete(report):
    """A reproduction that asserts no claim can still fail: every seed ran, every number it produced is finite, every
    claim was judged with a finite number, and the report says it asserts nothing (no "holds", exit code 3)."""
    import math
    import re

    assert report.holds is None and report.verdict == "reported only" and report.exit_code == 3
    assert "Verdict: reported only" in report.to_markdown() and "Verdict: holds" not in report.to_markdown()
    assert len(report.per_seed) == len(report.seeds) and all(report.per_seed)
    numbers = [v for run in report.per_seed for v in _numbers(run)]
    assert numbers and all(math.isfinite(v) for v in numbers), report.per_seed
    for row in report.rows:
        assert not row.asserted and row.verdict in ("holds", "does not hold"), row
        assert re.search(r"\d", row.ours) and not re.search(r"\b(nan|inf)\b", row.ours, re.I), row


def test_a_failed_rerun_leaves_no_earlier_report_in_the_output_dir(monkeypatch, tmp_path):
    """Was: a rerun into the same --output_dir that failed kept the earlier reproduction.json/.md (perhaps "holds"),
    looking current."""
    fail = {"now": False}

    def run(seed, fast, workdir):
        if fail["now"]:
            raise RuntimeError("seed run failed")
        return {"gap": 1.0}

    spec = Reproduction("toy_stale", "a toy claim", run, [Claim("gap", "1", lambda r: ("1", True))], default_seeds=2)
    monkeypatch.setitem(REPRODUCTIONS, "toy_stale", spec)
    assert reproduce("toy_stale", output_dir=str(tmp_path)).holds
    assert (tmp_path / "reproduction.json").is_file() and (tmp_path / "reproduction.md").is_file()
    (tmp_path / "notes.txt").write_text("kept")
    fail["now"] = True
    with pytest.raises(RuntimeError, match="seed run failed"):
        reproduce("toy_stale", output_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["notes.txt"]
