"""Robots.txt snapshot behaviours a mutation run (mu31) found unpinned: a network error wins over a status, a folder
snapshot of body-less hosts is not empty, folders with a dot in their name, bool statuses."""

import pytest

from hf_ext.compliance import RobotsTxtStore
from hf_ext.compliance.robots import status_class
from hf_ext.compliance.store import snapshot_is_empty

BODY = "User-agent: *\nDisallow: /private\n"


def test_a_recorded_error_makes_the_host_unreachable_whatever_the_status():
    """A fetch that got a status and then failed (e.g. the body read timed out) is unreachable, not available or
    unavailable: RFC 9309 treats a failed fetch as a complete disallow."""
    assert status_class(BODY, 200, "read timed out") == "unreachable"
    assert status_class(None, 404, "connection reset") == "unreachable"
    assert status_class(BODY, 200) == "available" and status_class(None, 404) == "unavailable"


def test_a_folder_snapshot_whose_hosts_have_no_body_is_not_empty(tmp_path):
    """A folder whose hosts were all 404s (no `<host>.txt` file, the hosts only in the manifest) holds records."""
    store = RobotsTxtStore()
    store.add("a.com", None, "2025-03-01", status=404)
    store.add("b.com", None, "2025-03-01", error="timeout")
    path = store.save(tmp_path / "snap", format="folder")
    assert not snapshot_is_empty(path)
    assert len(RobotsTxtStore.load(path)) == 2


def test_a_snapshot_folder_with_a_dot_in_its_name_loads_without_format(tmp_path):
    store = RobotsTxtStore()
    store.add("a.com", BODY, "2025-03-01", status=200)
    path = store.save(tmp_path / "snap.v2", format="folder")
    assert path.is_dir() and RobotsTxtStore.load(path)["a.com"].text == BODY


def test_a_bool_status_is_refused_by_name():
    with pytest.raises(TypeError, match="status of 'a.com' must be an int"):
        RobotsTxtStore().add("a.com", BODY, "2025-03-01", status=True)
