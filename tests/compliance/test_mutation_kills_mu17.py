"""Mutation run 17: a snapshot saved anew while a task is reading it is refused, not half-used.

A `RobotsTxtFilter` built from a snapshot path records the snapshot's fingerprint; each task loads the path on first
use and checks the fingerprint before and after reading it. A refresh saved over the path while the task read it
(after the first check) must raise: the task would otherwise decide with the rules it read while every later task
reads the new ones, mixing two snapshots in one output. Earlier tests only saved the new snapshot before a task
started (caught by the first check).
"""

import pytest
from datatrove.data import Document

from hf_ext.compliance import RobotsTxtFilter, RobotsTxtStore
from hf_ext.compliance.datatrove_filter import _snapshot_fingerprint

_OPEN = RobotsTxtStore.from_dict({"a.com": "User-agent: *\nAllow: /\n"})
_CLOSED = RobotsTxtStore.from_dict({"a.com": "User-agent: *\nDisallow: /\n"}, fetched_at="2025-03-01")


@pytest.mark.parametrize("name", ["snapshot", "snapshot.jsonl", "snapshot.parquet"])
def test_a_snapshot_saved_anew_while_a_task_reads_it_is_refused(tmp_path, monkeypatch, name):
    path = str(tmp_path / name)
    _OPEN.save(path)
    step = RobotsTxtFilter(path)
    built = _snapshot_fingerprint(path)
    real_load = RobotsTxtStore.load.__func__
    refreshed = []

    def load_while_a_refresh_lands(cls, p, *args, **kwargs):
        store = real_load(cls, p, *args, **kwargs)  # the task has read the open snapshot ...
        _CLOSED.save(path)  # ... and a refresh is saved over it before the task decides anything
        refreshed.append(_snapshot_fingerprint(path))
        return store

    monkeypatch.setattr(RobotsTxtStore, "load", classmethod(load_while_a_refresh_lands))
    doc = Document(text="x", id="d", metadata={"url": "https://a.com/x"})
    with pytest.raises(ValueError, match=r"robots snapshot '.*' changed since this RobotsTxtFilter was built"):
        step.filter(doc)
    assert len(refreshed) == 1 and refreshed[0] != built  # the refresh did land between the two checks
    monkeypatch.undo()
    # a step built now, from the refreshed snapshot, decides with it
    assert RobotsTxtFilter(path).filter(doc) == (False, "robots_txt")
