"""RFC 9309 parser and matcher (`hf_ext.compliance.rfc9309`) and the conformance table helpers: behaviours pinned
against the RFC text, Google's reference parser (`fast-robotstxt`) or a hand count, never a snapshot of the output."""

import pytest

from hf_ext.compliance.conformance import CASES, ENGINES, Case, conformance_table, run_conformance
from hf_ext.compliance.rfc9309 import MAX_LINE_BYTES, MAX_ROBOTS_BYTES, RobotsTxt, remove_dot_segments
from hf_ext.compliance.robots import RobotsCompliance

U = "http://example.com"


def _google(robots, agent, url):
    pytest.importorskip("robotstxt")
    return ENGINES["google"](robots, agent, url)


def test_product_token_stops_at_a_digit_on_both_sides():
    """RFC 9309 2.2.1: a product token is letters, `-` and `_` only, so `FooBot2000` names the token `foobot`."""
    robots = "User-agent: FooBot2000\nDisallow: /\n"
    assert not RobotsTxt.parse(robots).allowed(f"{U}/x", "FooBot")
    assert not RobotsTxt.parse(robots).allowed(f"{U}/x", "FooBot3")
    assert RobotsTxt.parse(robots).allowed(f"{U}/x", "BarBot")
    assert _google(robots, "FooBot", f"{U}/x") is False


@pytest.mark.parametrize("key", ["Dissallow", "Dissalow", "Disalow", "Diasllow", "Disallaw", "Disallowed"])
def test_every_disallow_spelling_of_the_reference_parser_is_a_disallow(key):
    """The reference parser reads these keys as `Disallow` (its accepted typos, and any key starting with it)."""
    robots = f"User-agent: FooBot\n{key}: /x\n"
    assert not RobotsTxt.parse(robots).allowed(f"{U}/x/1", "FooBot")
    assert RobotsTxt.parse(robots).allowed(f"{U}/y", "FooBot")
    assert _google(robots, "FooBot", f"{U}/x/1") is False


@pytest.mark.parametrize("key", ["Allowed", "ALLOWANCE"])
def test_a_key_starting_with_allow_is_an_allow(key):
    """The reference parser matches the `allow` key by prefix, as it does for `disallow`."""
    robots = f"User-agent: FooBot\nDisallow: /\n{key}: /x\n"
    assert RobotsTxt.parse(robots).allowed(f"{U}/x", "FooBot")
    assert not RobotsTxt.parse(robots).allowed(f"{U}/y", "FooBot")
    assert _google(robots, "FooBot", f"{U}/x") is True


def test_a_str_body_with_a_byte_order_mark_keeps_its_first_line():
    """A text body (already decoded) that starts with U+FEFF is read like the bytes with a UTF-8 BOM."""
    text = "\ufeffUser-agent: FooBot\nDisallow: /\n"
    assert not RobotsTxt.parse(text).allowed(f"{U}/x", "FooBot")
    assert not RobotsTxt.parse(text.encode()).allowed(f"{U}/x", "FooBot")


def test_a_str_body_is_cut_at_500_kib_of_utf8_bytes_not_characters():
    """RFC 9309 2.5: content after 500 KiB is ignored. A text of multi-byte characters passes 500 KiB of UTF-8 long
    before 500 K characters; it must be cut where the same bytes would be."""
    comment = "#" + "ツ" * 300 + "\n"  # 902 bytes, 302 characters
    n = MAX_ROBOTS_BYTES // len(comment.encode()) + 50
    text = "User-agent: FooBot\n" + comment * n + "Disallow: /\n"
    assert len(text) < MAX_ROBOTS_BYTES // 2 and len(text.encode()) > MAX_ROBOTS_BYTES + 20_000
    assert RobotsTxt.parse(text.encode()).allowed(f"{U}/x", "FooBot")  # the bytes form: rule beyond the limit
    assert RobotsTxt.parse(text).allowed(f"{U}/x", "FooBot")


def test_long_lines_are_cut_by_utf8_bytes():
    """Lines are cut after 8 * 2083 - 1 bytes like the reference parser, counting UTF-8 bytes: a rule of 3-byte
    characters longer than that is cut inside its characters, so its tail does not count."""
    head = "/" + "ツ" * 6000  # 18001 bytes, longer than the limit, though only 6001 characters
    assert len(head) < MAX_LINE_BYTES < len(head.encode())
    robots = f"User-agent: FooBot\nDisallow: {head}b\n"
    # the kept part of the line is a prefix of `head`, so a URL with the same characters and another tail is disallowed
    assert not RobotsTxt.parse(robots).allowed(f"{U}{head}c", "FooBot")
    assert RobotsTxt.parse(robots).allowed(f"{U}/other", "FooBot")
    assert _google(robots, "FooBot", f"{U}{head}c") is False


def test_a_raw_control_character_matches_its_percent_encoded_rule():
    """Characters invalid in a URI (controls, DEL) are percent-encoded on both sides before comparison."""
    robots = "User-agent: *\nDisallow: /a%7Fb\nDisallow: /c%01d\n"
    parsed = RobotsTxt.parse(robots)
    assert not parsed.allowed(f"{U}/a\x7fb", "FooBot")
    assert not parsed.allowed(f"{U}/c\x01d", "FooBot")
    assert parsed.allowed(f"{U}/ab", "FooBot")
    assert _google(robots, "FooBot", f"{U}/a\x7fb") is False


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/pub/%2e%2e/private/a", "/private/a"),
        ("/pub/%2E%2E/private/a", "/private/a"),
        ("/pub/%2E/private", "/pub/private"),
        ("/pub/.%2E/x", "/x"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/%2e%2e", "/a/"),
        ("/a/./b/../c", "/a/c"),
    ],
)
def test_remove_dot_segments_follows_rfc3986_and_reads_percent_2e_as_a_dot(path, expected):
    """RFC 3986 5.2.4 (hand-worked results), with `%2e` in either case spelling a dot as browsers read it; a final
    `.` or `..` segment leaves the folder with its trailing slash."""
    assert remove_dot_segments(path) == expected


@pytest.mark.parametrize("url", [f"{U}/a/b/..", f"{U}/a/.", f"{U}/a/./b/%2E%2E"])
def test_a_url_ending_in_a_dot_segment_is_the_folder(url):
    """`/a/b/..` and `/a/.` are the folder `/a/` an HTTP client requests, so `Disallow: /a/$` applies (Google's parser agrees)."""
    robots = "User-agent: *\nDisallow: /a/$\n"
    assert not RobotsTxt.parse(robots).allowed(url, "FooBot")
    assert _google(robots, "FooBot", url) is False


def test_conformance_table_lists_a_case_where_only_one_engine_is_wrong():
    """The disagreement list holds every case where any engine differs from the expected decision."""
    cases = [
        Case("a", "t", "", "FooBot", f"{U}/x", True, "b"),
        Case("b", "t", "", "FooBot", f"{U}/x", False, "b"),
        Case("c", "u", "", "FooBot", f"{U}/x", True, "b"),
    ]
    results = {"e1": {"a": True, "b": True, "c": True}, "e2": {"a": True, "b": False, "c": False}}
    table = conformance_table(results, cases)
    lines = table.splitlines()
    # per topic: cases right per engine, counted by hand
    assert "| t | 2 | 1 | 2 |" in lines and "| u | 1 | 1 | 0 |" in lines and "| **all** | 3 | 2 | 2 |" in lines
    wrong = [line.split(" | ")[0].lstrip("| ") for line in lines if line.startswith(("| a ", "| b ", "| c "))]
    assert wrong == ["b", "c"]


def test_protego_engine_decodes_a_bytes_body_as_utf8():
    """The Protego engine of the table reads a bytes body as UTF-8 text, like the `str` body it stands for."""
    pytest.importorskip("protego")
    robots = "User-agent: *\nDisallow: /café\n"
    assert ENGINES["protego"](robots.encode(), "FooBot", f"{U}/café") is False
    assert ENGINES["protego"](robots, "FooBot", f"{U}/café") is False


def test_run_conformance_refuses_an_unknown_engine():
    with pytest.raises(ValueError, match="unknown engines"):
        run_conformance(["hf_ext", "nosuch"], cases=CASES[:1])


_INDEX_ALLOW = "User-agent: *\nDisallow: /private/\nAllow: /private/index.html\n"
_INDEX_ALLOW_CASES = [
    ("/private/", True),  # the reference parser's added `Allow: /private/$`
    ("/private/index.html", True),
    ("/private/secret.html", False),
    ("/private/x/y", False),
    ("/private", True),  # not under the disallowed folder
]


@pytest.mark.parametrize("path, expected", _INDEX_ALLOW_CASES)
def test_index_html_allow_opens_the_folder_itself_only(path, expected):
    """`Allow: /d/index.html` also allows `/d/` -- exactly `/d/` (Google's parser adds `/d/$`). Without the `$` the
    added Allow `/d/` ties with `Disallow: /d/` and wins the tie: every page of the opted-out folder was allowed."""
    assert RobotsTxt.parse(_INDEX_ALLOW).allowed(f"{U}{path}", "CCBot") is expected
    assert _google(_INDEX_ALLOW, "CCBot", f"{U}{path}") is expected


def test_index_html_allow_keeps_the_rest_of_the_folder_out_on_the_default_backend():
    """The same robots.txt through `RobotsCompliance` (default `rfc9309` backend): only the folder's own page and its
    index stay in, every other page under it is non-compliant."""
    checker = RobotsCompliance({"example.com": _INDEX_ALLOW}, user_agents=["CCBot"])
    assert checker.backend == "rfc9309"
    urls = [f"{U}{path}" for path, _ in _INDEX_ALLOW_CASES]
    assert checker.is_compliant_batch(urls) == [expected for _, expected in _INDEX_ALLOW_CASES]
    assert checker.disallowed_agents(f"{U}/private/secret.html") == ("CCBot",)
