"""`hf-ext reproduce --first_seed K` runs seeds K .. K+N-1: fresh seeds beside the published ones from the command line
(sd48: the fresh-seed records could only be made through the Python API, `reproduce(method, seeds=[...])`)."""

from __future__ import annotations

import pytest

import hf_ext.reproduce as reproduce_module
from hf_ext.cli import main


class _Report:
    exit_code = 0

    def to_markdown(self):
        return "report"


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake(method, seeds=None, fast=False, output_dir=None, jobs=1, progress=None):
        seen.append((method, seeds, fast, jobs))
        return _Report()

    monkeypatch.setattr(reproduce_module, "reproduce", fake)
    return seen


def test_first_seed_runs_the_next_seeds(calls):
    assert main(["reproduce", "compliance", "--seeds", "3", "--first_seed", "8"]) == 0
    assert calls == [("compliance", [8, 9, 10], False, 1)]
    # without --seeds: the method's default count, from K
    assert main(["reproduce", "layer_parallel", "--first_seed", "6", "--jobs", "2"]) == 0
    assert calls[-1] == ("layer_parallel", [6, 7, 8], False, 2)
    # without --first_seed: the count is passed as before (seeds 0 .. N-1)
    assert main(["reproduce", "compliance", "--seeds", "4"]) == 0
    assert calls[-1] == ("compliance", 4, False, 1)


@pytest.mark.parametrize("first", ["-1", str(2**32 - 2)])
def test_first_seed_out_of_range_is_a_usage_error(calls, capsys, first):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "compliance", "--seeds", "3", "--first_seed", first])
    assert exc.value.code == 2 and "--first_seed must be in [0, 2**32 - N]" in capsys.readouterr().err
    assert calls == []


def test_first_seed_without_a_method_or_with_list_is_a_usage_error(calls, capsys):
    for argv in (["reproduce", "--first_seed", "3"], ["reproduce", "--list", "--first_seed", "3"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and "--first_seed" in capsys.readouterr().err
    assert calls == []
