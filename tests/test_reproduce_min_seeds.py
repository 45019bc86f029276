"""A full reproduction over too few seeds for a verdict is refused before any work (op19): `cubic_newton` judges its
claim with a sign test over the seeds (p < 0.05), whose smallest p over n seeds is 2**-n, so `--seeds 3` (p >= 0.125)
always reported "does not hold" and exited 1 although momentum won on 3 of 3 seeds; `warmup` needs a spread over
seeds (one seed always "did not hold"). `--fast` smoke runs take any number of seeds."""

import dataclasses
import json

import pytest

import hf_ext.reproduce.methods as M
from hf_ext.cli import main
from hf_ext.reproduce import reproduce


def _no_run(seed, fast, workdir):
    raise AssertionError("a refused reproduction must not run a seed")


@pytest.mark.parametrize("method,seeds,match", [
    ("cubic_newton", 3, r"cubic_newton: --seeds 3 cannot give a verdict: .*sign test.*at least 5 seeds"),
    ("cubic_newton", [0, 1, 2, 3], r"--seeds 4 cannot give a verdict.*0\.0625 at 4"),
    ("warmup", 1, r"warmup: --seeds 1 cannot give a verdict: .*standard deviation.*at least 2 seeds"),
])  # fmt: skip
def test_too_few_seeds_refused_before_any_work(tmp_path, monkeypatch, method, seeds, match):
    monkeypatch.setitem(M.REPRODUCTIONS, method, dataclasses.replace(M.REPRODUCTIONS[method], run=_no_run))
    (tmp_path / "reproduction.json").write_text(json.dumps({"verdict": "earlier"}))
    with pytest.raises(ValueError, match=match):
        reproduce(method, seeds=seeds, output_dir=str(tmp_path))
    assert json.loads((tmp_path / "reproduction.json").read_text()) == {"verdict": "earlier"}  # left alone


def test_cli_too_few_seeds_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setitem(
        M.REPRODUCTIONS, "cubic_newton", dataclasses.replace(M.REPRODUCTIONS["cubic_newton"], run=_no_run)
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "cubic_newton", "--seeds", "3"])
    assert exit_info.value.code == 2
    assert "--seeds 3 cannot give a verdict" in capsys.readouterr().err


def test_enough_seeds_and_fast_runs_are_judged(monkeypatch):
    wins = {"cn": 0.5, "cn_momentum": 0.2, "adam": 0.25}
    spec = dataclasses.replace(M.REPRODUCTIONS["cubic_newton"], run=lambda seed, fast, workdir: dict(wins))
    monkeypatch.setitem(M.REPRODUCTIONS, "cubic_newton", spec)
    assert reproduce("cubic_newton", seeds=5).holds  # 5/5: p = 1/32 < 0.05
    assert not reproduce("cubic_newton", seeds=1, fast=True).holds  # a smoke run: runs, no evidence
    assert main(["reproduce", "cubic_newton", "--fast", "--seeds", "1"]) == 1
