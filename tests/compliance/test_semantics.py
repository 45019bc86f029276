"""Issue 18: RFC 9309 semantics of the compliance filter (status classes, host records, agents, URLs, LRU cache)."""

import time

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsRecord, RobotsTxtStore

AI = ["GPTBot", "CCBot", "*"]


# 1. HTTP status classes -------------------------------------------------------------------------------------------
def _store(**records) -> RobotsTxtStore:
    return RobotsTxtStore([RobotsRecord(h.replace("_", "."), *r) for h, r in records.items()])


def test_status_classes_follow_rfc9309_by_default():
    store = _store(
        ok_org=("User-agent: GPTBot\nDisallow: /x\n", "2025-01-15", 200),
        gone_org=(None, "2025-01-15", 404),
        down_org=(None, "2025-01-15", 503),
        moved_org=(None, "2025-01-15", 301),
    )
    store.add("dead.org", None, "2025-01-15", None, error="URLError: timed out")
    rfc = RobotsCompliance(store, user_agents=AI)
    assert rfc.disallowed_agents("https://ok.org/x") == ("GPTBot",)
    assert rfc.is_compliant("https://gone.org/anything")  # 4xx: unavailable -> allow everything
    assert rfc.is_compliant("https://moved.org/anything")  # redirect not resolved: unavailable
    # 5xx and network errors: unreachable -> complete disallow, for every checked agent
    assert rfc.disallowed_agents("https://down.org/a") == tuple(AI)
    assert rfc.disallowed_agents("https://dead.org/") == tuple(AI)
    assert rfc.disallowed_agents_batch(["https://down.org/a", "https://gone.org/a"]) == [tuple(AI), ()]
    # the paper's pipeline: anything without a readable robots.txt is kept
    paper = RobotsCompliance(store, user_agents=AI, status_policy="paper")
    assert paper.is_compliant("https://down.org/a") and paper.is_compliant("https://dead.org/")
    assert paper.disallowed_agents("https://ok.org/x") == ("GPTBot",)
    with pytest.raises(ValueError, match="status_policy"):
        RobotsCompliance(store, status_policy="strict")


def test_status_class_counts_and_every_format_keeps_status_and_error(tmp_path):
    store = _store(ok_org=("User-agent: *\nDisallow:\n", None, 200), gone_org=(None, None, 404))
    store.add("down.org", None, status=500)
    store.add("dead.org", None, error="ConnectionRefusedError")
    store.add("unknown.org", None)
    expected = {"available": 1, "unavailable": 1, "unreachable": 2, "missing": 1}
    assert store.status_counts() == expected
    for name in ("folder", "s.jsonl", "s.parquet"):
        store.save(tmp_path / name)
        back = RobotsTxtStore.load(tmp_path / name)
        assert back.status_counts() == expected, name
        assert back["dead.org"].error == "ConnectionRefusedError" and back["down.org"].status == 500, name


def test_fetch_records_keep_the_status_class():
    from hf_ext.compliance.store import record_from_response

    assert record_from_response("a.org", 503, b"<html>busy</html>", "2025-01-15").status == 503
    down = RobotsTxtStore([record_from_response("a.org", 503, None, "2025-01-15")])
    assert not RobotsCompliance(down).is_compliant("https://a.org/page")


# 2. A host's own record wins -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fallback", ["www", "parents"])
def test_host_recorded_without_robots_does_not_fall_back_to_the_apex(fallback):
    robots = {"www.x.org": None, "x.org": "User-agent: *\nDisallow: /\n", "a.b.x.org": None}
    c = RobotsCompliance(robots, host_fallback=fallback)
    assert c.is_compliant("https://www.x.org/a")
    assert not c.is_compliant("https://x.org/a")
    if fallback == "parents":
        assert c.is_compliant("https://a.b.x.org/a")
        assert not c.is_compliant("https://c.b.x.org/a")  # no record of its own: the closest parent's applies


# 3. Agent matching and parsing ------------------------------------------------------------------------------------
def _one(robots, agent, url):
    return RobotsCompliance({"example.com": robots}, user_agents=[agent]).is_compliant(url)


def test_agent_groups_match_product_tokens_not_prefixes():
    robots = "User-agent: Applebot\nDisallow: /\n\nUser-agent: Google\nDisallow: /\n"
    assert not _one(robots, "Applebot", "https://example.com/a")
    assert _one(robots, "Applebot-Extended", "https://example.com/a")
    assert _one(robots, "Google-Extended", "https://example.com/a")
    # the crawler's token is its name up to the first character that is not a letter, '-' or '_'
    versioned = "User-agent: CCBot\nDisallow: /\n"
    assert not _one(versioned, "CCBot/2.0", "https://example.com/a")
    assert not _one("User-agent: CCBot/1.0\nDisallow: /\n", "CCBot", "https://example.com/a")


def test_user_agent_line_with_a_space_applies_to_its_first_token():
    robots = "User-agent: FOO BAR\nDisallow: /x\n"
    assert not _one(robots, "Foo", "https://example.com/x")
    assert _one(robots, "Bar", "https://example.com/x")


def test_unknown_line_between_user_agent_lines_does_not_end_the_group():
    robots = (
        "User-agent: FooBot\nCrawl-delay: 5\nSitemap: https://example.com/s.xml\nUser-agent: BarBot\nDisallow: /x\n"
    )
    assert not _one(robots, "FooBot", "https://example.com/x")
    assert not _one(robots, "BarBot", "https://example.com/x")


@pytest.mark.parametrize(
    "rule,url",
    [
        ("/café/", "https://example.com/caf%C3%A9/menu"),
        ("/caf%C3%A9/", "https://example.com/café/menu"),
        ("/caf%c3%a9/", "https://example.com/caf%C3%A9/menu"),
        ("/café/", "https://example.com/café/menu"),
        ("/foo/bar/%62%61%7A", "https://example.com/foo/bar/baz"),
    ],
)
def test_percent_encoded_and_raw_paths_match_each_other(rule, url):
    assert not _one(f"User-agent: *\nDisallow: {rule}\n", "GPTBot", url)


def test_partial_utf8_bom_does_not_hide_the_first_line():
    for bom in (b"\xef\xbb\xbf", b"\xef\xbb", b"\xef"):
        robots = bom + b"User-agent: GPTBot\nDisallow: /x\n"
        assert not _one(robots, "GPTBot", "https://example.com/x"), bom
    # a wrong byte sequence is garbage that spoils the first line only (the reference parser's behaviour)
    assert _one(b"\x11\xbfUser-agent: GPTBot\nDisallow: /x\n", "GPTBot", "https://example.com/x")


def test_very_long_lines_are_cut_like_the_reference_parser():
    limit = 8 * 2083 - 1  # bytes of a line the reference parser keeps
    prefix = "Disallow: "
    long_path = "/" + "a" * (limit - len(prefix) - 1)
    robots = f"User-agent: FooBot\n{prefix}{long_path}b\n"  # the final 'b' is cut off
    assert not _one(robots, "FooBot", f"https://example.com{long_path}")
    assert not _one(robots, "FooBot", f"https://example.com{long_path}c")
    assert _one(robots, "FooBot", "https://example.com/fux")


# 4. URLs without a scheme ----------------------------------------------------------------------------------------
def test_urls_without_a_scheme_are_matched_on_their_path():
    c = RobotsCompliance({"example.com": "User-agent: *\nDisallow: /private/\n"})
    assert not c.is_compliant("example.com/private/a")
    assert not c.is_compliant("Example.com:8080/private/a?x=1")
    assert c.is_compliant("example.com/public/a")
    assert c.is_compliant_batch(["example.com/private/a", "example.com/a"]) == [False, True]


# 5. Bounded cache is an O(1) LRU ---------------------------------------------------------------------------------
def _counting_lru(max_cached_hosts=2):
    """A bounded checker over a.org, b.org, c.org that records every host whose policy it (re)builds."""
    robots = {h: "User-agent: *\nDisallow: /x\n" for h in ("a.org", "b.org", "c.org")}
    c = RobotsCompliance(robots, max_cached_hosts=max_cached_hosts)
    builds = []
    original = c._build_policy
    c._build_policy = lambda host: builds.append(host) or original(host)
    return c, builds


def test_bounded_cache_evicts_the_least_recently_used_host():
    c, builds = _counting_lru()
    c.is_compliant_batch(["https://a.org/x", "https://b.org/x", "https://a.org/y", "https://c.org/x"])
    c.is_compliant("https://a.org/z")  # a was used after b: b is the one evicted
    assert builds == ["a.org", "b.org", "c.org"]
    c.is_compliant("https://b.org/z")
    assert builds[-1] == "b.org" and c.num_cached_hosts == 2


def test_bounded_cache_hit_through_another_url_prefix_refreshes_the_host():
    """Revisiting a host under another URL prefix (a port) is a use of that host too (found by mutation testing:
    oldest-first eviction passed the test above)."""
    c, builds = _counting_lru()
    # a.org, b.org, then a.org again under a new prefix (port): a is now the most recently used host
    assert c.is_compliant_batch(["https://a.org/y", "https://b.org/y", "http://a.org:8080/x"]) == [True, True, False]
    c.is_compliant("https://c.org/y")  # evicts the least recently used host: b.org
    c.is_compliant("https://a.org/z")
    assert builds == ["a.org", "b.org", "c.org"]


def test_bounded_cache_costs_about_the_same_as_unbounded():
    robots = {f"h{i}.org": f"User-agent: *\nDisallow: /{i % 7}\n" for i in range(5000)}
    urls = [f"https://h{i}.org/{i % 5}" for i in range(5000)] * 2

    def seconds(**kwargs):
        best = float("inf")
        for _ in range(2):
            c = RobotsCompliance(robots, user_agents=["GPTBot"], **kwargs)
            t0 = time.process_time()  # CPU time: other jobs on the machine do not count
            decisions = c.is_compliant_batch(urls)
            best = min(best, time.process_time() - t0)
        return best, decisions

    unbounded, expected = seconds()
    bounded, decisions = seconds(max_cached_hosts=1000)
    assert decisions == expected
    assert bounded < 3 * unbounded + 0.05, (bounded, unbounded)


def test_refetch_that_finds_the_file_unreachable_keeps_the_cached_copy():
    from hf_ext.compliance.store import record_from_response

    store = RobotsTxtStore()
    store.update_from_fetch(record_from_response("a.org", 200, b"User-agent: *\nDisallow: /x\n", "2025-01-01"))
    kept = store.update_from_fetch(record_from_response("a.org", 503, None, "2025-01-02"))
    assert kept.text is not None and kept.fetched_at == "2025-01-01"  # RFC 9309 2.4: cached copy while unreachable
    assert RobotsCompliance(store).is_compliant("https://a.org/y")
    store.update_from_fetch(record_from_response("a.org", 404, None, "2025-01-03"))  # gone: replaces the copy
    assert store["a.org"].status_class == "unavailable"
    store.update_from_fetch(record_from_response("b.org", None, None, "2025-01-03", error="timeout"))
    assert not RobotsCompliance(store).is_compliant("https://b.org/y")  # no cached copy: complete disallow
