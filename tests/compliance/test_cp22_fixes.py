"""Pass-22 audit (cp22) of compliance at scale.

F1: a `RobotsCompliance` kept the host policies it cached after its store changed in place (`update_from_fetch`,
`add`): it decided by the old rules in this process, while `num_proc` workers and datatrove tasks (whose unpickled
checker starts with empty caches) decided by the new ones, so `filter_compliant(num_proc=None)` and `(num_proc=2)`
kept different rows. The store now has a version bumped on every change, and the checker drops its caches when the
version it built them from is not the store's.

F3: an undated `update_from_fetch` replaced a newer dated record (and took the store's older default date, so a later
fetch older than the replaced record replaced it in turn), while an undated 304 left the record as it is. An undated
fetch now leaves a dated record as it is on both paths.

F2: docs/compliance.md said robots.txt bytes are "decoded as UTF-8 with replacement characters"; the store keeps each
byte that is not UTF-8 as its surrogate escape, which matches the URL's escape of that byte.
"""

import pickle
import re
from pathlib import Path

import datasets
import pytest

from hf_ext.compliance import RobotsCompliance, RobotsRecord, RobotsTxtStore, filter_compliant
from hf_ext.compliance.store import record_from_response

_GPTBOT_OUT = "User-agent: GPTBot\nDisallow: /\n"
_ALLOW_ALL = "User-agent: *\nAllow: /\n"


# --------------------------------------------------------------------------------------------------------------------
# F1: the checker follows its store
def _refreshed(store):
    # newer fetches: h1 lifts its GPTBot opt-out, h2 opts out
    store.update_from_fetch(RobotsRecord("h1.com", _ALLOW_ALL, "2025-02-01", 200))
    store.update_from_fetch(RobotsRecord("h2.com", _GPTBOT_OUT, "2025-02-01", 200))


def test_filter_compliant_follows_a_store_refreshed_in_place_with_and_without_num_proc():
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"url": [f"https://h{i % 4}.com/p{i}" for i in range(40)]})
    store = RobotsTxtStore.from_dict({"h1.com": _GPTBOT_OUT}, fetched_at="2025-01-01")
    chk = RobotsCompliance(store)
    before = filter_compliant(ds, chk)["url"]
    assert not any("//h1." in u for u in before)  # caches h1's old policy
    _refreshed(store)
    expected = filter_compliant(ds, RobotsCompliance(store))["url"]
    assert any("//h1." in u for u in expected) and not any("//h2." in u for u in expected)
    assert filter_compliant(ds, chk)["url"] == expected
    assert filter_compliant(ds, chk, num_proc=2)["url"] == expected


def test_every_decision_path_follows_add_and_update_from_fetch():
    store = RobotsTxtStore.from_dict({"h1.com": _GPTBOT_OUT, "www.h3.com": _GPTBOT_OUT}, fetched_at="2025-01-01")
    chk = RobotsCompliance(store, user_agents=["GPTBot"])
    urls = ["https://h1.com/x", "https://h2.com/x", "https://h3.com/x"]
    assert chk.disallowed_agents_batch(urls) == [("GPTBot",), (), ("GPTBot",)]
    assert chk.policy_for_url("https://h2.com/x").status_class == "missing"
    assert chk.policy("h3.com").robots_key == "www.h3.com"
    _refreshed(store)
    store.add("h3.com", _ALLOW_ALL)  # now found before the www. record
    assert [chk.is_compliant(u) for u in urls] == [True, False, True]
    assert chk.disallowed_agents_batch(urls) == [(), ("GPTBot",), ()]
    assert chk.policy_for_url("https://h2.com/x").status_class == "available"
    assert chk.policy("h3.com").robots_key == "h3.com"
    # a pickled copy (a datatrove task, a num_proc worker) decides as the original, and follows its own store
    copy = pickle.loads(pickle.dumps(chk))
    assert copy.disallowed_agents_batch(urls) == chk.disallowed_agents_batch(urls)
    copy.store.add("h2.com", None)
    assert copy.is_compliant("https://h2.com/x") and not chk.is_compliant("https://h2.com/x")


def test_a_304_that_redates_the_copy_bumps_the_store_version():
    store = RobotsTxtStore()
    store.add("a.com", _GPTBOT_OUT, fetched_at="2025-01-01", status=200)
    version = store._version
    store.update_from_fetch(record_from_response("a.com", 304, None, "2025-01-02"))
    assert store["a.com"].fetched_at == "2025-01-02" and store._version > version
    version = store._version
    store.update_from_fetch(record_from_response("a.com", 304, None, "2024-12-01"))  # older: nothing changes
    assert store._version == version


# --------------------------------------------------------------------------------------------------------------------
# F3: an undated fetch leaves a dated record as it is
@pytest.mark.parametrize(
    "undated",
    [
        RobotsRecord("a.com", _ALLOW_ALL, None, 200),
        RobotsRecord("a.com", None, None, 404),
        RobotsRecord("a.com", None, None, 304),
    ],
    ids=["200", "404", "304"],
)
def test_an_undated_fetch_leaves_a_dated_record_as_it_is(undated):
    store = RobotsTxtStore(fetched_at="2025-01-01")
    store.add("a.com", _GPTBOT_OUT, fetched_at="2025-03-01", status=200)
    before = store["a.com"]
    assert store.update_from_fetch(undated) is before
    assert store["a.com"] is before
    # a later fetch older than the stored record does not replace it either
    assert (
        store.update_from_fetch(RobotsRecord("a.com", "User-agent: CCBot\nDisallow: /\n", "2025-02-01", 200)) is before
    )
    assert not RobotsCompliance(store, user_agents=["GPTBot"]).is_compliant("https://a.com/x")


def test_an_undated_fetch_replaces_an_undated_record_and_adds_a_new_host():
    store = RobotsTxtStore()
    store.add("a.com", _GPTBOT_OUT)
    new = store.update_from_fetch(RobotsRecord("a.com", _ALLOW_ALL, None, 200))
    assert store["a.com"] is new and new.text == _ALLOW_ALL and new.fetched_at is None
    dated = RobotsTxtStore(fetched_at="2025-01-01")
    added = dated.update_from_fetch(RobotsRecord("b.com", _ALLOW_ALL, None, 200))
    assert dated["b.com"] is added and added.fetched_at == "2025-01-01"  # the store's date, as `add` gives


# --------------------------------------------------------------------------------------------------------------------
# F2: the docs say how bytes that are not UTF-8 are decoded, and it is what the store does
def test_docs_no_robots_txt_bullet_describes_the_surrogate_escape_decoding():
    doc = (Path(__file__).parents[2] / "docs" / "compliance.md").read_text(encoding="utf-8")
    bullet = re.search(r"^\* No robots\.txt .*?(?=^\* )", doc, re.MULTILINE | re.DOTALL)
    assert bullet is not None, "docs/compliance.md lost its 'No robots.txt' bullet"
    text = " ".join(bullet.group().split())
    assert "replacement characters" not in text
    assert "surrogate escape" in text and "`/caf%E9/x` and not `/caf%EF%BF%BD/x`" in text
    store = RobotsTxtStore()
    store.add("a.com", b"User-agent: *\nDisallow: /caf\xe9/\n")
    assert "\udce9" in store["a.com"].text and "\ufffd" not in store["a.com"].text
    chk = RobotsCompliance(store, user_agents=["GPTBot"])
    assert not chk.is_compliant("https://a.com/caf%E9/x")
    assert chk.is_compliant("https://a.com/caf%EF%BF%BD/x")


def test_policy_of_a_host_follows_the_store():
    """mu22 F5: `policy(host)` itself (not only the URL decisions) is rebuilt after `store.add`."""
    store = RobotsTxtStore()
    store.add("example.com", "User-agent: *\nAllow: /\n")
    checker = RobotsCompliance(store)
    assert not checker.policy("example.com").groups
    store.add("example.com", "User-agent: *\nDisallow: /\n")
    assert checker.policy("example.com").groups
