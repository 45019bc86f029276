"""pr51: `hf-ext reproduce --seeds 4294967296` (2**32, the largest count the old check took) built a list of 2**32
seeds (tens of GB) before any run and failed with a bare MemoryError (exit 4); a seed count is now bounded by
`MAX_SEEDS` (each seed is a whole training run with its own folder) and refused before any list is built. A failed
first seed also left an empty `seed<N>/` folder in `--output_dir` for every seed that never ran (100000 of them for
100000 seeds): each seed's folder is now made when that seed starts."""

from __future__ import annotations

import os
import resource

import pytest

import hf_ext.reproduce as reproduce_module
from hf_ext.cli import main
from hf_ext.reproduce import MAX_SEEDS, Claim, Reproduction, reproduce
from hf_ext.reproduce.methods import REPRODUCTIONS


@pytest.fixture
def toy(monkeypatch):
    """A registered reproduction `toy_pr51` whose run records its seeds and fails on seed 1."""
    ran = []

    def run(seed, fast, workdir):
        ran.append(seed)
        if seed == 1:
            raise RuntimeError("seed 1 crashed")
        return {"value": 1.0}

    spec = Reproduction("toy_pr51", "-", run, [Claim("value above 0", "-", lambda runs: ("1.0", True))])
    monkeypatch.setitem(REPRODUCTIONS, "toy_pr51", spec)
    return ran


@pytest.fixture
def no_huge_allocations():
    """Cap this process's address space 2 GiB above its current size (where the platform allows it), so that the old
    code's list of 2**32 seeds fails at once with a MemoryError instead of filling the machine's memory."""
    if not hasattr(resource, "RLIMIT_AS"):
        pytest.skip("no RLIMIT_AS on this platform")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as fh:
        current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = current + 2 * 2**30
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip("address space already capped below what the test needs")
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("count", [2**32, 2**31, MAX_SEEDS + 1])
def test_a_huge_seed_count_is_a_usage_error_before_any_seed_list(toy, capsys, tmp_path, no_huge_allocations, count):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "toy_pr51", "--seeds", str(count), "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err  # a usage error, not a failed run (exit 4, MemoryError)
    assert f"--seeds must be in [1, {MAX_SEEDS}]" in err and "--first_seed" in err
    assert toy == [] and not out.exists()
    # with --first_seed too: refused by the count before the seeds K .. K+N-1 are listed
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "toy_pr51", "--seeds", str(count), "--first_seed", "0"])
    assert exc.value.code == 2 and f"--seeds must be in [1, {MAX_SEEDS}]" in capsys.readouterr().err
    assert toy == []


@pytest.mark.parametrize("count", [2**32, 2**31, MAX_SEEDS + 1])
def test_the_python_api_refuses_a_huge_count_or_list_by_name(toy, tmp_path, no_huge_allocations, count):
    with pytest.raises(ValueError, match=rf"seeds \(--seeds\) must be at most {MAX_SEEDS} per reproduction"):
        reproduce("toy_pr51", seeds=count, output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=rf"at most {MAX_SEEDS} per reproduction, got {count}"):
        reproduce("toy_pr51", seeds=range(count))  # by its length, before going through every seed
    assert toy == [] and not (tmp_path / "out").exists()


def test_the_bound_itself_and_fresh_seeds_up_to_2_to_the_32_still_run(toy, monkeypatch):
    calls = []

    class _Report:
        exit_code = 0

        def to_markdown(self):
            return "report"

    def fake(method, seeds=None, fast=False, output_dir=None, jobs=1, progress=None):
        calls.append(seeds)
        return _Report()

    monkeypatch.setattr(reproduce_module, "reproduce", fake)
    assert main(["reproduce", "toy_pr51", "--seeds", str(MAX_SEEDS)]) == 0
    assert main(["reproduce", "toy_pr51", "--seeds", "2", "--first_seed", str(2**32 - 2)]) == 0
    assert calls == [MAX_SEEDS, [2**32 - 2, 2**32 - 1]]
    assert reproduce_module._seed_list(MAX_SEEDS) == list(range(MAX_SEEDS))


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_seed_leaves_no_folders_for_seeds_that_never_ran(toy, tmp_path, jobs, monkeypatch, repo_root):
    if jobs == 2:  # a spawned worker cannot run the test's closure: one module-level seed run that fails on seed 1
        # from a light module (the workers start in seconds; this module's imports took each worker minutes on a loaded
        # machine); seed 0 runs until the pool shuts down, so its success cannot come back before seed 1's failure
        monkeypatch.syspath_prepend(repo_root)
        from tests.reproduce_stub_runs import fails_on_seed_1, mark_pool_shutdown

        mark_pool_shutdown(monkeypatch, tmp_path)
        REPRODUCTIONS["toy_pr51"].run = fails_on_seed_1
    with pytest.raises(RuntimeError, match="seed 1 crashed"):
        reproduce("toy_pr51", seeds=50, output_dir=str(tmp_path), jobs=jobs)
    # seeds 0 and 1 started, no other: never 48 untouched folders
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == ["seed0", "seed1"], folders


def _old_hyperinf_folder(folder):
    """A hyperinf reproduction folder as the code before 2026-12-04 wrote it (per seed: widths, rho and cpu_seconds;
    no rank-1 numbers), with its report pair."""
    import json

    methods, widths = ("hyperinf", "datainf", "lissa", "tracin"), (64, 256, 1024)
    per_seed = {
        "widths": list(widths),
        "rho": {f"{m}@{w}": 0.5 for m in methods for w in widths},
        "cpu_seconds": {f"{m}@{w}": 1.0 for m in methods for w in widths},
    }
    record = {"method": "hyperinf", "seeds": [0, 1, 2], "fast": False, "seconds": 9.0, "date": "2026-12-02",
              "machine": "CPU", "per_seed": [per_seed] * 3, "verdict": "holds", "rows": []}  # fmt: skip
    (folder / "reproduction.json").write_text(json.dumps(record))
    (folder / "reproduction.md").write_text("old report\n")
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_rejudge_of_an_older_format_names_the_file_the_claim_and_the_fix(tmp_path):
    """A folder whose per-seed results lack a number a claim now reads ended in a bare KeyError 'rank1_widths'."""
    from hf_ext.reproduce import rejudge

    before = _old_hyperinf_folder(tmp_path)
    with pytest.raises(ValueError) as exc:
        rejudge(str(tmp_path))
    text = str(exc.value)
    assert "reproduction.json" in text and "rank1_widths" in text and "older version of hf_ext" in text
    assert "at rank 1" in text and "hf-ext reproduce hyperinf --output_dir" in text
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # both report files left as they were


def test_rejudge_refuses_per_seed_entries_that_are_not_objects(tmp_path):
    import json

    from hf_ext.reproduce import rejudge

    record = {"method": "warmup", "seeds": [0, 1], "fast": False, "seconds": 1.0, "date": "d", "machine": "m",
              "per_seed": [{"gaps": {}}, 3]}  # fmt: skip
    (tmp_path / "reproduction.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"per_seed\[1\] is a JSON int, not a seed's results"):
        rejudge(str(tmp_path))


def test_a_killed_seed_process_names_the_seeds_it_took_down(toy, tmp_path, monkeypatch, repo_root):
    """The pool's BrokenProcessPool ("A process in the process pool was terminated abruptly ...") named no seed, and
    the docstring said the seeds running beside a failure finish: the pool stops them all."""
    monkeypatch.syspath_prepend(repo_root)
    from tests.reproduce_stub_runs import POOL_SHUTDOWN, killed_on_seed_1, mark_pool_shutdown  # light module

    mark_pool_shutdown(monkeypatch, tmp_path)
    REPRODUCTIONS["toy_pr51"].run = killed_on_seed_1
    with pytest.raises(RuntimeError, match=r"one of the seeds \[0, 1\] ended abruptly .* no result of these seeds"):
        reproduce("toy_pr51", seeds=4, output_dir=str(tmp_path), jobs=2)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != POOL_SHUTDOWN)
    assert left == ["seed0", "seed1"]  # seeds 2 and 3 never started
