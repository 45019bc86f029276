"""Packaging audit pass 19 (pk19) fixes in the compliance package.

F2: without the datatrove extra, `from hf_ext.compliance import RobotsTxtFilter` and `hf-ext run compliance --engine
datatrove` ended in a bare `ModuleNotFoundError: No module named 'datatrove'` (the recipe after loading the corpus),
where every other extra names the `pip install 'hf_ext[...]'` to run.
"""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def no_datatrove(monkeypatch):
    """Make `import datatrove` fail as in an install without the extra (also where it is installed)."""
    for name in list(sys.modules):
        if name == "datatrove" or name.startswith("datatrove.") or name == "hf_ext.compliance.datatrove_filter":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "datatrove", None)
    import hf_ext.compliance

    monkeypatch.delattr(hf_ext.compliance, "datatrove_filter", raising=False)  # bound by an earlier import


def test_robots_txt_filter_without_datatrove_names_the_extra(no_datatrove):
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'hf_ext\[datatrove\]'") as info:
        from hf_ext.compliance import RobotsTxtFilter  # noqa: F401
    assert info.value.name == "datatrove"
    assert "hf_ext.compliance.datatrove_filter" not in sys.modules  # a later import (after installing) retries


def test_engine_datatrove_without_datatrove_is_refused_before_the_corpus_is_loaded(no_datatrove, monkeypatch, tmp_path):
    import hf_ext.recipes.compliance as recipe

    def load(*args, **kwargs):
        raise AssertionError("the corpus was loaded before the missing extra was noticed")

    monkeypatch.setattr("hf_ext.data.load_corpus", load)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--engine datatrove needs datatrove: pip install 'hf_ext\[datatrove\]'"):
        recipe.main(["--engine", "datatrove", "--output_dir", str(out)])
    assert not out.exists() or not any(out.iterdir())


def test_engine_datasets_does_not_need_datatrove(no_datatrove, tmp_path):
    from hf_ext.recipes.compliance import ComplianceArguments, _validate

    _validate(ComplianceArguments(output_dir=str(tmp_path / "out"), engine="datasets"))
