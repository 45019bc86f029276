"""Shared fixture: the package's `evaluate` metric modules, each loaded once per session."""

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
