"""Checks added by mutation testing of hf_ext.compliance: each one compares against an independent reference
(RFC 9309 text, Google's parser, a brute-force matcher or a re-implementation in the test), never a snapshot."""

import functools
import math
import random
import re
import time

import pytest

from hf_ext.compliance import (
    RobotsCompliance,
    RobotsTxtStore,
    annotate_compliance,
    compute_dcg,
    compute_retention_stats,
)
from hf_ext.compliance.rfc9309 import RobotsTxt, url_path
from hf_ext.compliance.store import record_from_response

KIB = 1024


def _google_allowed(robots: str, agent: str, url: str) -> bool:
    robotstxt = pytest.importorskip("robotstxt")
    return robotstxt.RobotsMatcher().is_allowed(robots, agent, url)


# RFC 9309 section 2.5: crawlers must parse at least 500 KiB ----------------------------------------------------------
def _padded(rule_end_at: int) -> str:
    """A robots.txt whose `Disallow: /x` line ends at byte `rule_end_at` (comments before it)."""
    head, rule = "User-agent: FooBot\n", "Disallow: /x\n"
    pad = rule_end_at - len(head) - len(rule)
    comments = []
    while pad > 0:
        n = min(pad, 1000)
        comments.append("#" + "c" * (n - 2) + "\n" if n >= 2 else "\n")
        pad -= n
    text = head + "".join(comments) + rule
    assert len(text.encode()) == rule_end_at
    return text


@pytest.mark.parametrize("form", ["str", "bytes"])
def test_a_rule_inside_the_first_500_kib_is_honoured(form):
    # The rule ends past 500,000 bytes but inside 500 KiB (512,000 bytes): it must apply (Google's parser, which has
    # no limit at all, agrees); a rule that starts after 500 KiB is ignored.
    inside = _padded(500 * KIB - 100)
    assert len(inside.encode()) > 500_000
    body = inside if form == "str" else inside.encode()
    assert not RobotsTxt.parse(body).allowed("http://a.org/x", "FooBot")
    assert RobotsTxt.parse(body).allowed("http://a.org/y", "FooBot")
    beyond = _padded(500 * KIB + 200)
    body2 = beyond if form == "str" else beyond.encode()
    assert RobotsTxt.parse(body2).allowed("http://a.org/x", "FooBot")
    # through the store and the checker as well
    assert not RobotsCompliance({"a.org": body}, user_agents=["FooBot"]).is_compliant("https://a.org/x")


def test_a_rule_inside_the_limit_agrees_with_googles_parser():
    inside = _padded(500 * KIB - 100)
    for path in ("/x", "/xy", "/y"):
        url = "http://a.org" + path
        assert RobotsTxt.parse(inside).allowed(url, "FooBot") == _google_allowed(inside, "FooBot", url), path


# Wildcard matching with many '*' (matched without backtracking, whatever their number) -----------------------------
def _brute_force(pattern: str, path: str) -> bool:
    """Does `pattern` (RFC 9309 `*` and final `$`) match a prefix of `path`? Plain recursion, no regex."""
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern

    @functools.cache
    def rec(i: int, j: int) -> bool:
        if i == len(body):
            return j == len(path) if anchored else True
        if body[i] == "*":
            return any(rec(i + 1, k) for k in range(j, len(path) + 1))
        return j < len(path) and path[j] == body[i] and rec(i + 1, j + 1)

    return rec(0, 0)


def test_patterns_with_many_wildcards_match_like_brute_force_and_google():
    rng = random.Random(0)
    checked = 0
    for _ in range(300):
        parts = ["".join(rng.choice("ab/") for _ in range(rng.randint(0, 2))) for _ in range(rng.randint(10, 12))]
        pattern = "/" + "*".join(parts) + ("$" if rng.random() < 0.5 else "")
        assert pattern.count("*") > 8  # more than the 8 that once went to a backtracking regex
        robots = f"User-agent: FooBot\nDisallow: {pattern}\n"
        parsed = RobotsTxt.parse(robots)
        for _ in range(6):
            path = "/" + "".join(rng.choice("ab/x") for _ in range(rng.randint(0, 14)))
            expected = not _brute_force(pattern, path)
            assert parsed.allowed("http://a.org" + path, "FooBot") == expected, (pattern, path)
            checked += 1
    assert checked == 1800
    # a case where restarting a '*' from the last candidate position instead of the first would miss the match
    robots = "User-agent: FooBot\nDisallow: /*a*b*" + "*" * 8 + "c\n"
    url = "http://a.org/xaxbxaxc"
    assert not RobotsTxt.parse(robots).allowed(url, "FooBot")
    assert _google_allowed(robots, "FooBot", url) is False
    robots = "User-agent: FooBot\nDisallow: /*a*b*c*d*e*f*g*h*i*j\nAllow: /*a*b*c*d*e*f*g*h*i*j$\n"
    for path in ("/aXbXcXdXeXfXgXhXiXj", "/aXbXcXdXeXfXgXhXiXjk", "/abcdefghiaj", "/abcdefghi"):
        url = "http://a.org" + path
        assert RobotsTxt.parse(robots).allowed(url, "FooBot") == _google_allowed(robots, "FooBot", url), path


# Longest match over whole rule sets, and the cost of one decision ----------------------------------------------------
def _canonical(text: str) -> str:
    """The canonical form of the test alphabet: `%61` is the unreserved `a` (decoded), `%2f` a reserved `/` (kept
    encoded, hex upper case)."""
    return text.replace("%61", "a").replace("%2f", "%2F")


def _reference_allowed(rules: list[tuple[bool, str]], path: str) -> bool:
    """RFC 9309 2.2.2 by brute force: of the rules that match, the longest (in octets, after canonicalisation) decides;
    on equal length `Allow` wins; no match (or an empty rule only) allows."""
    best = None
    for is_allow, pattern in rules:
        pattern = _canonical(pattern)
        if pattern and _brute_force(pattern, path):
            best = max(best or (-1, False), (len(pattern.encode()), is_allow))
    return True if best is None else best[1]


_LETTERS = ["a", "b", "/", "$", "%61", "%2f"]


def _random_pattern(rng: random.Random, many_wildcards: bool) -> str:
    n, star = (rng.randint(14, 20), 0.6) if many_wildcards else (rng.randint(0, 6), 0.2)
    body = "".join("*" if rng.random() < star else rng.choice(_LETTERS) for _ in range(n))
    return rng.choice(["/", "/", "*", ""]) + body + ("$" if rng.random() < 0.3 else "")


def _random_path(rng: random.Random, rules: list[tuple[bool, str]]) -> str:
    """A raw path: random, or (half of the time) one that a random rule matches, with random text for each `*`."""
    pick = rng.choice(rules)[1]
    if rng.random() < 0.5 or not pick:
        return "/" + "".join(rng.choice(_LETTERS) for _ in range(rng.randint(0, 12)))
    anchored = pick.endswith("$")
    first, *rest = (pick[:-1] if anchored else pick).split("*")

    def text() -> str:
        return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(0, 3)))

    path = first + "".join(text() + part for part in rest) + ("" if anchored else text())
    return path if path.startswith("/") else "/" + path


@pytest.mark.parametrize("seed", range(4))
def test_decisions_over_random_rule_sets_equal_a_brute_force_longest_match(seed):
    """Whole rule sets (Allow and Disallow, `*`, `$`, escapes that change a rule's length, empty rules, more and fewer
    than 8 wildcards) decide as the longest matching rule does, `Allow` winning ties."""
    rng = random.Random(seed)
    for _ in range(150):
        rules = [(rng.random() < 0.5, _random_pattern(rng, rng.random() < 0.3)) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.1:
            rules.append((False, ""))
        lines = "".join(f"{'Allow' if a else 'Disallow'}: {p}\n" for a, p in rules)
        parsed = RobotsTxt.parse("User-agent: FooBot\n" + lines)
        for _ in range(8):
            raw = _random_path(rng, rules)
            # a URL's `$` is written `%24`, which a rule's literal `$` or `%24` matches (RFC 9309 section 2.2.3)
            assert url_path("http://a.org" + raw) == _canonical(raw).replace("$", "%24")
            expected = _reference_allowed(rules, _canonical(raw))
            assert parsed.allowed("http://a.org" + raw, "FooBot") == expected, (lines, raw)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("end", ["", "$"])
def test_a_rule_with_eight_wildcards_decides_a_long_path_in_linear_time(end):
    """`/*a*a*a*a*a*a*a*b` on a path of 60 `a`s: a backtracking `.*` tries every way of placing the `a`s (hours); a
    linear-time matcher scans the path once. The robots.txt is the site's content, so no pattern may hang a run."""
    robots = f"User-agent: *\nDisallow: /*a*a*a*a*a*a*a*b{end}\n"
    assert robots.count("*") - 1 == 8
    parsed = RobotsTxt.parse(robots)
    parsed.matcher("FooBot")  # compiled outside the timed part
    t0 = time.process_time()
    decisions = [parsed.allowed("https://x.example/" + "a" * 60 + tail, "FooBot") for tail in ("", "c", "b", "ba")]
    seconds = time.process_time() - t0
    assert decisions == [True, True, False, end == "$"]
    assert seconds < 0.5, seconds


def _per_url_cpu_seconds(n_rules: int, n_urls: int) -> float:
    """CPU time of one decision by a compiled matcher of `n_rules` rules (the audit's large robots.txt), best of 3."""
    rng = random.Random(0)
    robots = "User-agent: *\n" + "".join(
        f"Disallow: /{rng.choice(['cat', 'tag', 'p', 'archive'])}/{i}/*{rng.choice(['?', '.pdf$', '/print', ''])}\n"
        for i in range(n_rules)
    )
    matcher = RobotsTxt.parse(robots).matcher("FooBot")
    paths = [
        url_path(f"https://a.com/{rng.choice(['cat', 'tag', 'p', 'x'])}/{rng.randint(0, 2 * n_rules)}/z?{i % 10}")
        for i in range(n_urls)
    ]
    assert not all(matcher.allowed(p) for p in paths) and any(matcher.allowed(p) for p in paths)
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()  # CPU time: other jobs on the machine do not count
        for path in paths:
            matcher.allowed(path)
        best = min(best, time.process_time() - t0)
    return best / n_urls


def test_one_decision_costs_time_linear_in_the_number_of_rules():
    """10x the rules may cost 10x the time, not 100x (a capturing group per rule cost time quadratic in the rules:
    about 27 ms per URL with 5,000 rules, 200 ms with 19,000)."""
    small = _per_url_cpu_seconds(500, 3000)
    large = _per_url_cpu_seconds(5000, 300)
    assert large < 2.5 * 10 * small, (large, small)  # measured: about 10x (about 50x to 100x before)
    assert large < 2e-3, large  # 27 ms before


# Fetch records: only a 2xx body is a robots.txt ----------------------------------------------------------------------
@pytest.mark.parametrize("status", [301, 302, 404, 503])
def test_a_non_2xx_body_is_not_stored_as_the_robots_txt(status):
    record = record_from_response("a.org", status, b"User-agent: *\nDisallow: /\n", "2025-01-15")
    assert record.text is None and record.status == status
    expected_class = "unavailable" if status < 500 else "unreachable"
    assert record.status_class == expected_class
    store = RobotsTxtStore([record])
    assert store.status_counts()[expected_class] == 1
    # RFC 9309 2.3.1: 3xx/4xx allow everything, 5xx disallows everything
    assert RobotsCompliance(store).is_compliant("https://a.org/page") == (status < 500)


# Retention statistics: whitespace tokens are runs of non-whitespace ------------------------------------------------
def test_whitespace_token_count_ignores_repeated_and_non_space_whitespace():
    import datasets

    texts = ["one  two\nthree\tfour ", "  lead and trail  ", "a\n\nb", "", "x\u3000y"]
    urls = ["https://a.org/drop/1", "https://a.org/keep", "https://b.org/p", "https://b.org/drop/2", "https://a.org/k"]
    robots = {"a.org": "User-agent: GPTBot\nDisallow: /drop/\n", "b.org": "User-agent: GPTBot\nDisallow: /drop/\n"}
    ds = annotate_compliance(datasets.Dataset.from_dict({"url": urls, "text": texts}), RobotsCompliance(robots))
    stats = compute_retention_stats(ds)
    n = [len(re.findall(r"\S+", t)) for t in texts]  # reference: runs of non-whitespace characters
    assert stats.overall["tokens"] == sum(n)
    assert stats.overall["tokens_removed"] == n[0] + n[3]
    rows = {r["domain"]: r for r in stats.per_domain}
    assert rows["a.org"]["tokens"] == n[0] + n[1] + n[4]
    assert rows["a.org"]["tokens_removed_pct"] == pytest.approx(100.0 * n[0] / (n[0] + n[1] + n[4]))


# DCG: sign conventions for negative scores and for lower-is-better absolute gaps -----------------------------------
def _reference_gap(full: float, comp: float, relative: bool, lower: bool) -> float:
    """Positive = compliance costs performance, in percent of |full| (relative) or in score units (absolute)."""
    better_by = (comp - full) if lower else (full - comp)  # how much better the full-data model is
    return 100.0 * better_by / abs(full) if relative else better_by


@pytest.mark.parametrize("relative", [True, False])
def test_dcg_matches_a_reference_on_negative_and_lower_is_better_scores(relative):
    full = {"loglik": -2.0, "neg_acc": -0.5, "ppl": 20.0, "loss": 2.0, "acc": 0.6, "loss_neg": -1.0}
    comp = {"loglik": -2.2, "neg_acc": -0.4, "ppl": 22.0, "loss": 1.9, "acc": 0.54, "loss_neg": -0.8}
    lower = {"ppl", "loss", "loss_neg"}
    report = compute_dcg(full, comp, relative=relative, lower_is_better=sorted(lower))
    gaps = {r["task"]: r["gap"] for r in report.rows}
    expected = {t: _reference_gap(full[t], comp[t], relative, t in lower) for t in full}
    assert gaps == pytest.approx(expected)
    assert report.mean_gap == pytest.approx(math.fsum(expected.values()) / len(expected))
    # the full model's log-likelihood is higher (better): compliance costs performance, so the gap is positive
    assert gaps["loglik"] > 0 and gaps["ppl"] > 0 and gaps["loss"] < 0 and gaps["neg_acc"] < 0
