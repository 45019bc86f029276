"""Audit pass 43 (sm54): `hf-ext reproduce METHOD` printed nothing until the report, after the last seed (minutes to an
hour per seed). It now prints one line on stderr per seed started, finished or failed, with the counts, the seed's
time and the elapsed time; the lines come from the parent process, so parallel workers (`--jobs N`) cannot cut them.
The report on stdout is unchanged. Nothing here depends on timing: the toy seeds meet through marker files."""

from __future__ import annotations

import os
import re
import time

import pytest

from hf_ext.cli import main
from hf_ext.reproduce import Claim, Reproduction, reproduce
from hf_ext.reproduce.methods import REPRODUCTIONS

LINE = re.compile(r"^hf-ext reproduce toy_sm54: seed (\d+) (started|finished|failed)\b.*\[elapsed \d+:\d\d:\d\d\]$")


@pytest.fixture
def toy(monkeypatch):
    """A registered reproduction `toy_sm54`; its in-process run records what stderr held when each seed ran."""
    seen: list[str] = []
    spec = Reproduction("toy_sm54", "-", None, [Claim("value above 0", "-", lambda runs: ("1.0", True))])
    monkeypatch.setitem(REPRODUCTIONS, "toy_sm54", spec)
    return spec, seen


def _events(err: str) -> list[tuple[int, str]]:
    lines = [line for line in err.splitlines() if line.startswith("hf-ext reproduce toy_sm54: seed ")]
    assert all(LINE.match(line) for line in lines), lines
    return [(int(m.group(1)), m.group(2)) for m in map(LINE.match, lines)]


def test_jobs_1_prints_each_seed_as_it_starts_and_finishes(toy, capsys):
    spec, seen = toy

    def run(seed, fast, workdir):
        seen.append(capsys.readouterr().err)  # printed before the seed's run returned, not with the report
        return {"value": 1.0}

    spec.run = run
    assert main(["reproduce", "toy_sm54", "--seeds", "2", "--first_seed", "5"]) == 0
    out, err = capsys.readouterr()
    assert _events(seen[0]) == [(5, "started")]
    assert _events(seen[1]) == [(5, "finished"), (6, "started")]
    assert _events(err) == [(6, "finished")]
    assert "seed 5 started (1/2 started, 1 running)" in seen[0] and "(2/2 done)" in err
    assert "### toy_sm54" in out and "hf-ext reproduce toy_sm54:" not in out  # the report alone on stdout


def test_a_failed_seed_is_named_in_the_progress(toy, capsys):
    spec, _ = toy

    def run(seed, fast, workdir):
        if seed == 1:
            raise RuntimeError("seed 1 crashed")
        return {"value": 1.0}

    spec.run = run
    assert main(["reproduce", "toy_sm54", "--seeds", "3"]) == 4
    assert _events(capsys.readouterr().err) == [(0, "started"), (0, "finished"), (1, "started"), (1, "failed")]


def _wait_for(path):
    deadline = time.monotonic() + 300
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)


def _ordered_run(seed, fast, workdir):
    """Seed 1 finishes first: seed 0 waits until seed 2 has started (its folder is made when it is handed to the pool),
    which happens once this process has seen seed 1 finish."""
    if seed == 0:
        _wait_for(os.path.join(os.path.dirname(workdir), "seed2"))
    return {"value": 1.0}


def test_jobs_2_through_the_command_prints_to_stderr(toy, capsys, tmp_path):
    spec, _ = toy
    spec.run = _ordered_run
    assert main(["reproduce", "toy_sm54", "--seeds", "3", "--jobs", "2", "--output_dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    events = _events(err)
    assert events[:4] == [(0, "started"), (1, "started"), (1, "finished"), (2, "started")]
    assert sorted(events[4:]) == [(0, "finished"), (2, "finished")]  # in either order
    lines = [line for line in err.splitlines() if " seed " in line]
    assert "(1/3 done)" in lines[2] and "(3/3 started, 2 running)" in lines[3] and "(3/3 done)" in lines[5]
    assert "hf-ext reproduce toy_sm54:" not in out


def test_the_api_is_quiet_by_default_and_checks_progress(toy, capsys):
    spec, _ = toy
    spec.run = lambda seed, fast, workdir: {"value": 1.0}
    reproduce("toy_sm54", seeds=2)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress must be a callable"):
        reproduce("toy_sm54", seeds=2, progress="stderr")
