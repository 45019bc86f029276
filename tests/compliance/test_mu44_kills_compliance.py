"""Mutation pass mu44: tests that kill surviving mutants of the pass-37 RobotsTxtFilter argument checks."""

import types
from pathlib import Path

import pytest

from hf_ext.compliance import RobotsTxtStore

ROBOTS = "User-agent: *\nDisallow: /x\n"


def _filter():
    pytest.importorskip("datatrove")
    from hf_ext.compliance.datatrove_filter import RobotsTxtFilter

    return RobotsTxtFilter


def _kept(step, urls):
    from datatrove.data import Document

    docs = [Document(text=str(i), id=str(i), metadata={"url": url}) for i, url in enumerate(urls)]
    return [d.metadata["url"] for d in step.run(iter(docs))]


def test_datatrove_filter_still_takes_a_mapping_and_a_path(tmp_path):
    """The robots type check must not refuse what the docstring lists: a mapping host -> robots.txt text (a plain
    dict or any other Mapping) and a snapshot path as a str or an os.PathLike."""
    RobotsTxtFilter = _filter()
    urls = ["http://a.com/x", "http://a.com/y"]
    assert _kept(RobotsTxtFilter({"a.com": ROBOTS}), urls) == ["http://a.com/y"]
    assert _kept(RobotsTxtFilter(types.MappingProxyType({"a.com": ROBOTS})), urls) == ["http://a.com/y"]
    path = RobotsTxtStore.from_dict({"a.com": ROBOTS}).save(tmp_path / "snapshot.jsonl")
    for robots in (Path(path), str(path)):
        assert _kept(RobotsTxtFilter(robots), urls) == ["http://a.com/y"]
