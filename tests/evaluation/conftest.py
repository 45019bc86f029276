"""Shared fixture: the package's `evaluate` metric modules, each loaded once per session; and `run_wrapper`, the
wrapper CLI run with lm-eval's own entry point stubbed."""

import sys

import pytest


@pytest.fixture(scope="session")
def load():
    """`load(name)`: `evaluate.load` of the metric module `name` shipped with hf_ext (cached)."""
    evaluate = pytest.importorskip("evaluate")
    from hf_ext.evaluation import metric_path

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = evaluate.load(metric_path(name))
        return cache[name]

    return get


def run_wrapper(argv, monkeypatch):
    """`python -m hf_ext.evaluation ARGV` with lm-eval's `cli_evaluate` replaced by a recorder: the `sys.argv` lm-eval
    would have run with, one entry per call (none when the wrapper refused the line first)."""
    import lm_eval.__main__

    from hf_ext.evaluation.__main__ import main

    ran = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: ran.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["x"])
    main(list(argv))
    return ran
