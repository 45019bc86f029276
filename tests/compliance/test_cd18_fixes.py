"""Pass-18 audit (cd18) of the compliance layer, robots.txt side: the coarse list never holds a public suffix, the
coarse criterion of a closed site, coarse list entries and blank URLs, and `fetch_robots_txt` against local servers
(content codings, ports, a total deadline)."""

import pytest

from hf_ext.compliance import RobotsCompliance, build_blocked_domains, is_blocked_domain

# --------------------------------------------------------------------------------------------------------------------
# F1: a public suffix is never listed


@pytest.fixture
def builtin_suffix_rule(monkeypatch):
    """Decide public suffixes by the built-in rule, whether or not tldextract is installed."""
    from hf_ext.compliance import domains

    monkeypatch.setattr(domains, "_PSL", False, raising=False)


def _gov_uk_checker():
    return RobotsCompliance(
        {
            "www.gov.uk": "User-agent: GPTBot\nDisallow: /\n",  # the portal closes its site to GPTBot
            "manchester.gov.uk": "User-agent: *\nAllow: /\n",  # another organisation, open
            "www.x.co.uk": "User-agent: *\nDisallow: /\n",  # an ordinary domain under a suffix
            "www.y.com": "User-agent: *\nDisallow: /\n",
        }
    )


def _check_gov_uk(domains, checker):
    assert "gov.uk" not in domains and "co.uk" not in domains
    assert {"www.gov.uk", "www.x.co.uk", "x.co.uk", "www.y.com", "y.com"} <= set(domains)
    for url, dropped in [
        ("https://www.gov.uk/x", True),
        ("https://manchester.gov.uk/bins", False),
        ("https://www.nhs.gov.uk/a", False),
        ("https://other.co.uk/a", False),
        ("https://x.co.uk/a", True),
        ("https://blog.y.com/a", True),
    ]:
        assert is_blocked_domain(url, domains) is dropped, url
    # the fine mode agrees on the sites of other organisations under the suffix
    assert checker.is_compliant("https://manchester.gov.uk/bins")


def test_www_fallback_never_lists_a_public_suffix_builtin_rule(builtin_suffix_rule):
    checker = _gov_uk_checker()
    _check_gov_uk(build_blocked_domains(checker), checker)


def test_public_suffix_builtin_rule_cases(builtin_suffix_rule):
    from hf_ext.compliance.domains import _is_public_suffix

    for host in ["com", "uk", "gov.uk", "co.uk", "com.au", "gov.br", "gob.mx", "gov.pl", "ac.jp", "org.np", "x.np"]:
        assert _is_public_suffix(host), host
    for host in ["x.com", "x.co.uk", "www.gov.uk", "example.org", "bbc.uk", "127.0.0.1", "2001:db8::1", "nasa.gov"]:
        assert not _is_public_suffix(host), host


def test_snapshot_host_that_is_a_suffix_is_not_listed(builtin_suffix_rule):
    checker = RobotsCompliance({"gov.uk": "User-agent: *\nDisallow: /\n", "co.uk": None})
    checker.store.add("co.uk", None, status=503)  # unreachable: disallow everything under RFC 9309
    assert build_blocked_domains(checker) == frozenset()
    assert not is_blocked_domain("https://manchester.gov.uk/", build_blocked_domains(checker))


def test_registrable_domain_that_returns_a_suffix_lists_the_host(builtin_suffix_rule):
    checker = RobotsCompliance({"x.co.uk": "User-agent: *\nDisallow: /\n", "news.y.com": "User-agent: *\nDisallow: /\n"})
    naive = lambda h: h.split(".", 1)[1]  # noqa: E731 - 'x.co.uk' -> 'co.uk': no registrable domain
    assert sorted(build_blocked_domains(checker, registrable_domain=naive)) == ["x.co.uk", "y.com"]
    # '' (no registrable domain) for a suffix host: not listed either
    checker = RobotsCompliance({"gov.uk": "User-agent: *\nDisallow: /\n"})
    assert build_blocked_domains(checker, registrable_domain=lambda h: "") == frozenset()


def test_www_fallback_never_lists_a_public_suffix_with_tldextract(monkeypatch):
    tldextract = pytest.importorskip("tldextract")
    from hf_ext.compliance import domains

    monkeypatch.setattr(domains, "_PSL", None, raising=False)  # found again: tldextract's bundled list
    checker = _gov_uk_checker()
    _check_gov_uk(build_blocked_domains(checker), checker)
    ext = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    listed = build_blocked_domains(checker, registrable_domain=lambda h: ext(h).top_domain_under_public_suffix)
    assert "gov.uk" not in listed and "www.gov.uk" in listed and "x.co.uk" in listed
    assert not is_blocked_domain("https://manchester.gov.uk/bins", listed)


# --------------------------------------------------------------------------------------------------------------------
# F8: the coarse criterion is a closed site, not the URL `/`


@pytest.mark.parametrize(
    "robots, listed",
    [
        ("User-agent: *\nDisallow: /$\n", False),  # only the homepage closed
        ("User-agent: *\nAllow: /$\nDisallow: /\n", True),  # everything but the homepage closed
        ("User-agent: *\nDisallow: /\n", True),
        ("User-agent: *\nDisallow: /*\n", True),
        ("User-agent: *\nDisallow: *\n", True),
        ("User-agent: *\nDisallow: /\nAllow: /public/\n", True),
        ("User-agent: *\nDisallow: /private/\n", False),
        ("User-agent: *\nDisallow: /h\n", False),  # a short prefix rule does not close the site
        ("User-agent: *\nDisallow: /0\n", False),
        ("User-agent: *\nDisallow: /robots.txt\n", False),
        ("User-agent: *\nDisallow: /?\n", False),
        ("User-agent: *\nDisallow: /*.pdf$\n", False),
        # one probe closed for GPTBot, the other for CCBot: no agent has the site closed
        ("User-agent: GPTBot\nDisallow: /h\n\nUser-agent: CCBot\nDisallow: /0\n", False),
        ("User-agent: GPTBot\nDisallow: /\n", True),
    ],
)
@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_coarse_list_decides_on_a_closed_site_not_the_homepage(robots, listed, backend):
    if backend == "google":
        pytest.importorskip("robotstxt")
    checker = RobotsCompliance({"site.com": robots}, user_agents=["GPTBot", "CCBot"], backend=backend)
    assert (build_blocked_domains(checker) == {"site.com"}) is listed


# --------------------------------------------------------------------------------------------------------------------
# F6: list entries in wildcard syntax are read as the domain, other non-names are refused


@pytest.mark.parametrize("entry", [".x.com", "*.x.com", " *.X.COM. ", ".x.com\n"])
def test_wildcard_and_leading_dot_entries_mean_the_domain(entry):
    from hf_ext.compliance import BlockedDomains

    assert BlockedDomains([entry]) == {"x.com"}
    for url in ("https://x.com/a", "https://sub.x.com/a"):
        assert is_blocked_domain(url, [entry]), url
    assert not is_blocked_domain("https://notx.com/a", [entry])


@pytest.mark.parametrize("entry", ["x y.com", "x.*.com", "*x.com", "x..com", "..x.com", "*.*.x.com", "x.com*"])
def test_entries_that_are_no_domain_name_are_refused_by_name(entry):
    from hf_ext.compliance import BlockedDomains

    with pytest.raises(ValueError, match=r"domains\[1\]=.* is not a domain name"):
        BlockedDomains(["ok.com", entry])
    with pytest.raises(ValueError, match="is not a domain name"):
        is_blocked_domain("https://x.com/", [entry])


def test_ip_and_idna_entries_still_accepted():
    from hf_ext.compliance import BlockedDomains

    assert BlockedDomains(["[2001:DB8::1]", "127.0.0.1", "bücher.de", "a_b.x.com"]) == {
        "2001:db8::1",
        "127.0.0.1",
        "xn--bcher-kva.de",
        "a_b.x.com",
    }


# --------------------------------------------------------------------------------------------------------------------
# F7: a blank URL is missing in the coarse mode too

BLANK_URLS = [None, "", "  ", "\t\n", " \u3000\r", "https://y.com/a", "https://x.com/a"]


@pytest.mark.parametrize("missing_url", ["drop", "keep"])
def test_coarse_blank_urls_follow_missing_url_as_fine_does(missing_url):
    datasets = pytest.importorskip("datasets")
    from hf_ext.compliance import filter_compliant

    checker = RobotsCompliance({"x.com": "User-agent: *\nDisallow: /\n"}, missing_url=missing_url)
    ds = datasets.Dataset.from_dict({"url": BLANK_URLS})
    fine = filter_compliant(ds, checker, mode="fine")["url"]
    coarse = filter_compliant(ds, checker, mode="coarse")["url"]
    assert list(coarse) == list(fine)
    expected = ["https://y.com/a"] if missing_url == "drop" else BLANK_URLS[:-1]
    assert list(coarse) == expected


@pytest.mark.parametrize("missing_url", ["drop", "keep"])
def test_datatrove_coarse_blank_urls_follow_missing_url(missing_url):
    pytest.importorskip("datatrove")
    from datatrove.data import Document

    from hf_ext.compliance import RobotsTxtFilter

    checker = RobotsCompliance({"x.com": "User-agent: *\nDisallow: /\n"}, missing_url=missing_url)
    docs = [Document(text="t", id=str(i), metadata={"url": u}) for i, u in enumerate(BLANK_URLS)]
    coarse = [RobotsTxtFilter(checker, mode="coarse").filter(d) for d in docs]
    fine = [RobotsTxtFilter(checker, mode="fine").filter(d) for d in docs]
    assert [r is True for r in coarse] == [r is True for r in fine]
    assert [r is True for r in coarse][:5] == [missing_url == "keep"] * 5
    assert [r is True for r in RobotsTxtFilter(checker, mode="coarse").filter_batch(docs)] == [r is True for r in coarse]
    with pytest.raises(TypeError, match="url must be a str or None, got int"):
        RobotsTxtFilter(checker, mode="coarse").filter(Document(text="t", id="n", metadata={"url": 5}))
