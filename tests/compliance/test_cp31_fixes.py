"""Regression tests of audit pass 31 (cp31)."""

import json

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore


# F1: a snapshot written with pandas holds its status column as float64 (200.0, and null / NaN where no status) -----
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_snapshot_with_whole_float_statuses_loads_as_int_statuses(tmp_path, fmt):
    rows = [
        {"host": "a.com", "robots_txt": "User-agent: GPTBot\nDisallow: /\n", "status": 200.0, "error": None},
        {"host": "b.com", "robots_txt": None, "status": 404.0, "error": None},
        {"host": "c.com", "robots_txt": None, "status": 503.0, "error": None},
        {"host": "d.com", "robots_txt": None, "status": float("nan"), "error": "TimeoutError"},
    ]
    path = tmp_path / f"snap.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # NaN written as JSON's NaN, as json.dumps does
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)  # status: a double column
    store = RobotsTxtStore.load(path)
    assert {h: (r.status, r.status_class) for h, r in store.items()} == {
        "a.com": (200, "available"),
        "b.com": (404, "unavailable"),
        "c.com": (503, "unreachable"),
        "d.com": (None, "unreachable"),
    }
    assert all(r.status is None or type(r.status) is int for r in store.values())
    checker = RobotsCompliance(store, user_agents=["GPTBot"])
    assert checker.is_compliant_batch(["https://a.com/x", "https://b.com/x", "https://c.com/x"]) == [False, True, False]


def test_snapshot_with_a_fractional_status_is_still_refused(tmp_path):
    path = tmp_path / "snap.jsonl"
    path.write_text(json.dumps({"host": "a.com", "robots_txt": None, "status": 404.5}) + "\n")
    with pytest.raises(TypeError, match="status of 'a.com' must be an int"):
        RobotsTxtStore.load(path)

