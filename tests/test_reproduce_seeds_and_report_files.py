"""`reproduce(seeds=...)` and the report files of `reproduce` / `rejudge`.

`seeds="12"` ran seeds 1 and 2, `True` one seed, `[0.9, 1.7]` seeds 0 and 1, and `[0, 1, -1]` ran seeds 0 and 1 in
full before seed -1's recipe refused it. A failed `reproduction.md` write left the old `.md` (another verdict) beside
the new `reproduction.json`, and the CLI said "no report was written" beside a complete `reproduction.json`."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hf_ext.utils.io as io
from hf_ext.cli import main
from hf_ext.reproduce import Claim, Reproduction, rejudge, reproduce
from hf_ext.reproduce.methods import REPRODUCTIONS


@pytest.fixture
def toy(monkeypatch):
    """A registered reproduction `toy_seeds` whose run records its seeds (and refuses a negative one, as the
    recipes' `--seed` check does); `toy["claims"]` can be swapped to change the verdict."""
    ran = []

    def run(seed, fast, workdir):
        if seed < 0:
            raise ValueError(f"--seed must be an integer in [0, 2**32), got {seed}.")
        ran.append(seed)
        return {"value": 1.0}

    spec = Reproduction("toy_seeds", "-", run, [Claim("value above 0", "-", lambda runs: ("1.0", True))])
    monkeypatch.setitem(REPRODUCTIONS, "toy_seeds", spec)
    return {"ran": ran, "spec": spec}


@pytest.mark.parametrize(
    "bad, error",
    [
        ("3", TypeError),
        ("12", TypeError),
        (b"1", TypeError),
        (True, TypeError),
        (2.0, TypeError),
        (None.__class__, TypeError),
        ({0: 1}, TypeError),
        ([0.9, 1.7], ValueError),
        ([True, False], ValueError),
        ([0, 1, -1], ValueError),
        ([0, 2**32], ValueError),
        (["0"], ValueError),
        ([], ValueError),
        (0, ValueError),
        (-2, ValueError),
        ([1, 1], ValueError),
    ],
)
def test_bad_seeds_are_refused_by_name_before_any_run(toy, bad, error):
    with pytest.raises(error, match="seeds"):
        reproduce("toy_seeds", seeds=bad)
    assert toy["ran"] == []


@pytest.mark.parametrize("count", [2**32 + 1, 2**40, 2**64])
def test_a_seed_count_above_2_to_the_32_is_refused_before_building_the_seed_list(toy, tmp_path, count):
    """ev17: `seeds=2**33` built `list(range(2**33))` (tens of GB) before any check and ended in a MemoryError that
    named nothing, while the same seeds as a list were refused by name. (Counts beyond what a machine can allocate at
    once, so that the old code fails at once too.)"""
    with pytest.raises(ValueError, match=r"seeds must be a non-empty list of integer seeds in \[0, 2\*\*32\)"):
        reproduce("toy_seeds", seeds=count, output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"in \[0, 2\*\*32\), got 4294967297 seeds"):
        reproduce("toy_seeds", seeds=range(2**32 + 1))  # refused by its length, not by going through 2**32 seeds
    assert toy["ran"] == [] and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:  # the CLI: a usage error (exit 2), not a failed run (exit 4)
        main(["reproduce", "toy_seeds", "--seeds", str(count)])
    assert exc.value.code == 2 and toy["ran"] == []


def test_good_seeds_still_run(toy):
    assert reproduce("toy_seeds", seeds=2).seeds == [0, 1]
    assert reproduce("toy_seeds", seeds=(4, 2**32 - 1)).seeds == [4, 2**32 - 1]
    assert reproduce("toy_seeds", seeds=np.int64(1)).seeds == [0]
    assert reproduce("toy_seeds", seeds=np.array([5, 3])).seeds == [5, 3]
    assert reproduce("toy_seeds", seeds=range(2, 4)).seeds == [2, 3]
    assert toy["ran"] == [0, 1, 4, 2**32 - 1, 0, 5, 3, 2, 3]


def _verdicts(folder):
    """(reproduction.json's verdict or None, reproduction.md's verdict line or None)."""
    js, md = folder / "reproduction.json", folder / "reproduction.md"
    verdict = json.loads(js.read_text())["verdict"] if js.is_file() else None
    line = next((x for x in md.read_text().splitlines() if x.startswith("Verdict")), "") if md.is_file() else None
    return verdict, line


def _failing_md_write(monkeypatch):
    def failing_write_text(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "atomic_write_text", failing_write_text)


def test_rejudge_never_leaves_an_old_md_beside_a_new_json(toy, tmp_path, monkeypatch):
    reproduce("toy_seeds", seeds=2, output_dir=str(tmp_path))
    assert _verdicts(tmp_path) == ("holds", "Verdict: holds (every asserted claim: 1 of 1 claims).")
    toy["spec"].claims = [Claim("value above 2", "-", lambda runs: ("1.0", False))]
    _failing_md_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        rejudge(str(tmp_path))
    # the new judgement is in the .json, and no .md of the old one ("holds") is left to look current
    assert _verdicts(tmp_path) == ("does not hold", None)
    monkeypatch.undo()
    monkeypatch.setitem(REPRODUCTIONS, "toy_seeds", toy["spec"])
    rejudge(str(tmp_path))  # the .md is written again from the saved per-seed results
    assert _verdicts(tmp_path) == ("does not hold", "Verdict: does not hold (1 of 1 asserted claims do not hold).")


def test_rejudge_keeps_the_old_pair_when_the_json_write_fails(toy, tmp_path, monkeypatch):
    reproduce("toy_seeds", seeds=2, output_dir=str(tmp_path))
    toy["spec"].claims = [Claim("value above 2", "-", lambda runs: ("1.0", False))]

    def failing_write_json(path, obj, indent=2):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "atomic_write_json", failing_write_json)
    with pytest.raises(OSError):
        rejudge(str(tmp_path))
    verdict, line = _verdicts(tmp_path)
    assert verdict == "holds" and line in (None, "Verdict: holds (every asserted claim: 1 of 1 claims).")


def test_the_cli_names_the_report_files_a_failed_reproduction_left(toy, tmp_path, monkeypatch, capsys):
    _failing_md_write(monkeypatch)
    assert main(["reproduce", "toy_seeds", "--seeds", "2", "--output_dir", str(tmp_path)]) == 4
    err = capsys.readouterr().err
    assert _verdicts(tmp_path) == ("holds", None)
    assert f"{tmp_path} holds reproduction.json, not reproduction.md (hf_ext.reproduce.rejudge" in err
    assert "no report was written" not in err
    toy["spec"].run = lambda seed, fast, workdir: 1 / 0
    assert main(["reproduce", "toy_seeds", "--seeds", "1", "--output_dir", str(tmp_path)]) == 4
    assert "failed before a verdict (exit 4); no report was written" in capsys.readouterr().err
