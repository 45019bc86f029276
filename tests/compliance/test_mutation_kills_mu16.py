"""Mutation run 16: RobotsTxtFilter passes its options to the checker it builds; the WHATWG IPv4 last-part bound.

- A `RobotsTxtFilter` built from a `{host: text}` mapping, a `RobotsTxtStore` or a snapshot path builds its own
  `RobotsCompliance`: every option given to the step (`user_agents`, `status_policy`, `host_fallback`, `missing_url`,
  `max_cached_hosts`, `backend`) must reach it, and the step's decisions must follow them (dropping the options there
  silently fell back to the 15 default agents and RFC 9309's status rules).
- `normalize_host`: the last part of an IPv4 address with `n` parts must be below `256 ** (5 - n)`; `1.2.3.256` is not
  an address (browsers refuse it) and must not become `1.2.4.0`, whose robots.txt would then apply to it.
"""

import pytest
from datatrove.data import Document

from hf_ext.compliance import RobotsCompliance, RobotsTxtFilter, RobotsTxtStore
from hf_ext.compliance.robots import DEFAULT_AI_USER_AGENTS, normalize_host
from hf_ext.compliance.store import RobotsRecord

# GPTBot (a default agent, not CCBot) is shut out of a.com; b.com's robots.txt was unreachable (503); c.com closes
# everything to everyone, and www.c.com has no record of its own (so only the "www" fallback reaches c.com's rules)
_ROBOTS = {
    "a.com": "User-agent: GPTBot\nDisallow: /\n",
    "b.com": RobotsRecord(host="b.com", text=None, status=503),
    "c.com": "User-agent: *\nDisallow: /\n",
}
_OPTIONS = dict(
    user_agents=["CCBot", "*"], status_policy="paper", host_fallback="exact", missing_url="drop", max_cached_hosts=7,
    backend="protego",
)  # fmt: skip


def _robots(form, tmp_path):
    if form == "mapping":
        return dict(_ROBOTS)
    store = RobotsTxtStore.from_dict(_ROBOTS)
    if form == "store":
        return store
    path = tmp_path / "snap.jsonl"
    store.save(path)
    return str(path)


def _kept(step, url, doc_id="d"):
    return step.filter(Document(text="x", id=doc_id, metadata={"url": url})) is True


@pytest.mark.parametrize("form", ["mapping", "store", "path"])
def test_filter_passes_its_options_to_the_checker_it_builds(form, tmp_path):
    step = RobotsTxtFilter(_robots(form, tmp_path), **_OPTIONS)
    checker = step.checker
    assert checker.user_agents == ("CCBot", "*")
    assert checker.status_policy == "paper"
    assert checker.host_fallback == "exact"
    assert checker.missing_url == "drop"
    assert checker.max_cached_hosts == 7
    assert checker.backend == "protego"


@pytest.mark.parametrize("form", ["mapping", "store", "path"])
def test_filter_decisions_follow_its_options(form, tmp_path):
    robots = _robots(form, tmp_path)
    # the defaults: GPTBot is checked, a 5xx robots.txt disallows everything, www.c.com falls back to c.com
    default = RobotsTxtFilter(robots)
    assert default.checker.user_agents == DEFAULT_AI_USER_AGENTS
    assert not _kept(default, "https://a.com/page")
    assert not _kept(default, "https://b.com/page")
    assert not _kept(default, "https://www.c.com/page")
    assert _kept(default, "")  # missing_url="keep"

    # only CCBot: GPTBot's opt-out on a.com does not matter (but c.com's opt-out for everyone does)
    ccbot = RobotsTxtFilter(robots, user_agents=["CCBot"])
    assert _kept(ccbot, "https://a.com/page")
    assert not _kept(ccbot, "https://c.com/page")
    # "paper": an unreachable robots.txt opts nothing out
    assert _kept(RobotsTxtFilter(robots, status_policy="paper"), "https://b.com/page")
    # "exact": www.c.com has no record of its own, so nothing opts it out
    assert _kept(RobotsTxtFilter(robots, host_fallback="exact"), "https://www.c.com/page")
    # missing_url="drop": a document without a URL is dropped
    assert not _kept(RobotsTxtFilter(robots, missing_url="drop"), "")


def test_checker_built_by_the_filter_equals_one_built_directly(tmp_path):
    """Every form gives the decisions of `RobotsCompliance(store, **options)` on the same URLs."""
    urls = ["https://a.com/p", "https://b.com/p", "https://c.com/p", "https://www.c.com/p", "https://d.com/p", ""]
    direct = RobotsCompliance(RobotsTxtStore.from_dict(_ROBOTS), **_OPTIONS)
    expected = [not direct.disallowed_agents(u) for u in urls]
    assert expected == [True, True, False, True, True, False]
    for form in ("mapping", "store", "path"):
        step = RobotsTxtFilter(_robots(form, tmp_path / form), **_OPTIONS)
        assert [_kept(step, u, str(i)) for i, u in enumerate(urls)] == expected, form


@pytest.mark.parametrize(
    "host, expected",
    [
        ("1.2.3.255", "1.2.3.255"),
        ("1.2.3.256", "1.2.3.256"),  # last of four parts must be < 256
        ("1.2.65535", "1.2.255.255"),
        ("1.2.65536", "1.2.65536"),  # last of three parts must be < 256**2
        ("1.16777215", "1.255.255.255"),
        ("1.16777216", "1.16777216"),  # last of two parts must be < 256**3
        ("4294967295", "255.255.255.255"),
        ("4294967296", "4294967296"),  # a single part must be < 256**4
    ],
)
def test_ipv4_last_part_bound(host, expected):
    assert normalize_host(host) == expected
    assert normalize_host(f"http://{host}/x") == expected


def test_out_of_range_ipv4_host_does_not_take_the_next_address_robots_txt():
    checker = RobotsCompliance({"1.2.4.0": "User-agent: *\nDisallow: /\n"}, user_agents=["GPTBot"])
    assert checker.disallowed_agents("http://1.2.3.256/x") == ()
    assert checker.disallowed_agents("http://1.2.4.0/x") == ("GPTBot",)
