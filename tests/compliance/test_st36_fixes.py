"""`RobotsTxtStore.update_from_fetch` gives the same record for every order in which one set of dated fetches is
applied: the record that applying them in date order gives (st36 F1)."""

import itertools
import json

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore
from hf_ext.compliance.store import _NOT_MODIFIED_WITHOUT_COPY, RobotsRecord

BODY_A = "User-agent: *\nDisallow: /x\n"
BODY_B = "User-agent: *\nDisallow: /page\n"
URLS = ["http://a.com/page", "http://a.com/x", "http://a.com/y"]


def fetch(day, status, text=None, error=None):
    date = day if isinstance(day, str) else f"2025-01-{day:02d}"
    return RobotsRecord("a.com", text, date, status, error)


# 200 / 404 / 503 / a 200 without body / a network error / 304, on distinct and on equal dates
FETCH_SETS = [
    [fetch(1, 200, BODY_A), fetch(3, 503), fetch(2, 404)],
    [fetch(1, 200, BODY_A), fetch(2, 503), fetch(3, 404), fetch(4, None, error="TimeoutError: t")],
    [fetch(1, 200, BODY_A), fetch(2, 304), fetch(3, 404), fetch(4, 503)],
    [fetch(1, 404), fetch(2, 503), fetch(3, 200, BODY_B), fetch(4, 304), fetch(5, 500)],
    [fetch(1, 200, BODY_A), fetch(2, 200), fetch(3, 503), fetch(4, 304)],
    [fetch(1, 503), fetch(2, 304), fetch(3, 200, BODY_B), fetch(4, 502)],
    [fetch(2, 200, BODY_A), fetch(2, 503), fetch(2, 404)],  # one instant
    [fetch(1, 200, BODY_A), fetch(1, 200, BODY_B), fetch(3, 503), fetch(3, 404), fetch(2, 304)],
    [
        fetch("2025-01-02", 200, BODY_A),
        fetch("2025-01-02T00:00:00+00:00", 404),
        fetch("2025-01-02T01:00:00+02:00", 503),
    ],
]


def reference(fetches):
    """RFC 9309's rules applied in date order (distinct dates): (text, status class, fetched_at)."""
    state = None
    for f in sorted(fetches, key=lambda f: f.fetched_at):
        cls = None if state is None else state[1]
        if f.status == 304 and not f.error:
            state = (state[0], cls, f.fetched_at) if cls == "available" else (None, "unreachable", f.fetched_at)
        elif f.status_class == "unreachable" and cls == "available":
            pass  # the cached copy (RFC 9309 section 2.4)
        else:
            state = (f.text if f.status_class != "unreachable" else None, f.status_class, f.fetched_at)
    return state


def decisions(store):
    checker = RobotsCompliance(store, user_agents=["GPTBot"])
    return [checker.is_compliant(url) for url in URLS]


@pytest.mark.parametrize("fetches", FETCH_SETS, ids=range(len(FETCH_SETS)))
def test_every_order_gives_one_record(fetches):
    finals = set()
    for order in itertools.permutations(fetches):
        store = RobotsTxtStore()
        for f in order:
            store.update_from_fetch(f)
        finals.add((store["a.com"], tuple(decisions(store))))
    assert len(finals) == 1, finals
    record = next(iter(finals))[0]
    if len({f.fetched_at for f in fetches}) == len(fetches) and all(len(f.fetched_at) == 10 for f in fetches):
        assert (record.text, record.status_class, record.fetched_at) == reference(fetches)


def test_repro_cp35_unreachable_after_a_404_disallows():
    store = RobotsTxtStore()
    for f in (fetch(1, 200, BODY_A), fetch(3, 503), fetch(2, 404)):
        store.update_from_fetch(f)
    assert store["a.com"].status_class == "unreachable" and store["a.com"].fetched_at == "2025-01-03"
    assert decisions(store) == [False, False, False]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "folder"])
def test_history_survives_save_and_load(tmp_path, fmt):
    """A store saved between fetches and loaded again ends as the one that never left memory."""
    fetches = [fetch(1, 200, BODY_A), fetch(5, 503), fetch(3, 304), fetch(2, 404), fetch(4, 200, BODY_B)]
    for cut in range(1, len(fetches)):
        store = RobotsTxtStore()
        for f in fetches[:cut]:
            store.update_from_fetch(f)
        path = tmp_path / f"s{cut}.{fmt}" if fmt != "folder" else tmp_path / f"s{cut}"
        loaded = RobotsTxtStore.load(store.save(path, format=fmt), format=fmt)
        assert loaded["a.com"] == store["a.com"]
        for f in fetches[cut:]:
            loaded.update_from_fetch(f)
            store.update_from_fetch(f)
        assert loaded["a.com"] == store["a.com"]
    assert store["a.com"].text == BODY_B and store["a.com"].masked_status == 503


def test_snapshot_without_history_is_written_and_read_as_before(tmp_path):
    store = RobotsTxtStore()
    store.update_from_fetch(fetch(1, 200, BODY_A))
    store.update_from_fetch(fetch(2, 404))
    row = json.loads(store.save(tmp_path / "s.jsonl").read_text())
    assert sorted(row) == ["error", "fetched_at", "host", "robots_txt", "status"]
    import pyarrow.parquet as pq

    assert pq.read_schema(store.save(tmp_path / "s.parquet")).names == [
        "host", "robots_txt", "fetched_at", "status", "error"
    ]  # fmt: skip
    # an older snapshot: an unreachable record with no history takes an older copy as the cached one
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"host": "a.com", "robots_txt": None, "fetched_at": "2025-01-03", "status": 503}) + "\n")
    loaded = RobotsTxtStore.load(old)
    loaded.update_from_fetch(fetch(1, 200, BODY_A))
    assert loaded["a.com"].text == BODY_A and loaded["a.com"].masked_fetched_at == "2025-01-03"


def test_not_modified_history_and_record_constructor():
    store = RobotsTxtStore()
    for f in (fetch(1, 404), fetch(2, 304), fetch(3, 503)):
        store.update_from_fetch(f)
    record = store["a.com"]
    assert (record.status, record.base_fetched_at, record.masked_fetched_at, record.masked_status) == (
        503, "2025-01-01", "2025-01-02", 304
    )  # fmt: skip
    assert RobotsTxtStore([record])["a.com"] == record
    assert RobotsTxtStore.from_dict({"a.com": record})["a.com"] == record
    store.update_from_fetch(fetch(4, 500))
    assert store["a.com"].masked_fetched_at == "2025-01-02"
    other = RobotsTxtStore()
    other.update_from_fetch(fetch(2, 304))
    assert other["a.com"].error == _NOT_MODIFIED_WITHOUT_COPY
    with pytest.raises(ValueError, match="masked_fetched_at"):
        RobotsTxtStore().add("a.com", None, "2025-01-01", 503, masked_status=304)
