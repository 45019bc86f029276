"""Mutation-testing gaps of RobotsCompliance's host and URL parsing that the other compliance tests let through. The
expected decisions come from the documented rules (`host_fallback` candidates, the batch API being
`disallowed_agents` over many URLs), never from snapshots of current outputs."""

from hf_ext.compliance import RobotsCompliance
from hf_ext.compliance.robots import normalize_host

DISALLOW_ALL = "User-agent: *\nDisallow: /\n"
DISALLOW_X = "User-agent: *\nDisallow: /x\n"


def test_parents_fallback_stops_before_the_top_level_domain():
    """host_fallback="parents" looks up every parent *domain* (`a.b.example.com -> b.example.com -> example.com`),
    never the bare top-level label: a record stored under `com` (or a single-label host such as `localhost`) must
    not decide for every host below it. Including the TLD made any `.com` URL inherit `com`'s disallow-all."""
    rc = RobotsCompliance(
        {"com": DISALLOW_ALL, "localhost": DISALLOW_ALL}, user_agents=["GPTBot", "*"], host_fallback="parents"
    )
    for url in ("https://a.example.com/page", "https://example.com/page", "http://app.localhost/page"):
        assert rc.is_compliant(url) is True, url
        assert rc.disallowed_agents_batch([url]) == [()], url
    assert rc.is_compliant("https://localhost/page") is False  # the exact host still has its record


def test_batch_keeps_a_url_the_engine_cannot_read_like_the_single_url_path():
    """`disallowed_agents_batch` is documented as `disallowed_agents` over many URLs, and a URL the matching engine
    cannot read is not opted out. protego raises on a path holding a lone surrogate (text decoded with
    surrogateescape); the single-URL path keeps it, so must the batch. Treating the failure as a disallow dropped
    such documents from the corpus in batch mode only."""
    rc = RobotsCompliance({"a.com": DISALLOW_X}, user_agents=["GPTBot", "*"], backend="protego")
    urls = ["https://a.com/\udc80page", "https://a.com/x", "https://a.com/ok"]
    single = [rc.disallowed_agents(u) for u in urls]
    assert single[0] == () and single[1] != () and single[2] == ()
    assert rc.disallowed_agents_batch(urls) == single
    cold = RobotsCompliance({"a.com": DISALLOW_X}, user_agents=["GPTBot", "*"], backend="protego")
    assert cold.disallowed_agents_batch(urls) == single  # also on a cold cache


def test_percent_escaped_forbidden_host_characters_are_not_decoded():
    """normalize_host decodes percent-escapes in a host as browsers do, except into a forbidden host code point
    (`/ : @ # ? %` ...): browsers refuse such a host, and its key must never hold a '/' or ':' that would make it
    look like another host or a port. Decoding them anyway turned `a%2Fb.com` into the key `a/b.com`."""
    assert normalize_host("https://a%2Fb.com/x") == "a%2fb.com"
    assert normalize_host("https://a%3Ab.com/x") == "a%3ab.com"
    assert normalize_host("ex%23ample.com") == "ex%23ample.com"
    assert normalize_host("https://ex%61mple.com/x") == "example.com"  # ordinary escapes are still decoded


def test_percent_decoded_hosts_are_lower_cased():
    """Host keys are lower case, also when an escape decodes to an upper-case letter (`ex%41mple.com` is
    `example.com` to a browser). Without lower-casing after decoding, the URL missed example.com's record."""
    assert normalize_host("https://ex%41MPLE.com/x") == "example.com"
    rc = RobotsCompliance({"example.com": DISALLOW_ALL}, user_agents=["GPTBot", "*"])
    assert rc.is_compliant("https://ex%41mple.com/page") is False
