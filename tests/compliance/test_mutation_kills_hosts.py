"""Mutation-testing gaps of RobotsCompliance's host lookup and URL-prefix cache that the other tests let through: the
documented `host_fallback` candidates (both directions of `"www"`, nearest parent first for `"parents"`) and decisions
that must not depend on what the cache has already seen."""

from hf_ext.compliance import RobotsCompliance

DISALLOW_ALL = "User-agent: *\nDisallow: /\n"
ALLOW_ALL = "User-agent: *\nAllow: /\n"


def test_www_fallback_finds_the_www_record_of_a_bare_host():
    """host_fallback="www" (the default) also looks up `example.com` for `www.example.com` "and the other way round":
    a bare-host URL whose only record is `www.example.com`'s disallow-all is non-compliant. Without the bare -> www
    direction the host has no record and the URL would be kept."""
    rc = RobotsCompliance({"www.example.com": DISALLOW_ALL}, user_agents=["GPTBot", "*"], host_fallback="www")
    assert rc.is_compliant("https://example.com/page") is False
    assert rc.policy_for_url("https://example.com/page").robots_key == "www.example.com"
    # and the documented first direction still holds
    rc = RobotsCompliance({"example.com": DISALLOW_ALL}, user_agents=["GPTBot", "*"], host_fallback="www")
    assert rc.is_compliant("https://www.example.com/page") is False


def test_parents_fallback_tries_the_nearest_parent_first():
    """host_fallback="parents" tries `a.b.example.com -> b.example.com -> example.com` and the first record wins: with
    b.example.com disallowing and example.com allowing, https://a.b.example.com/x is non-compliant, decided by
    b.example.com. Skipping the immediate parent would let example.com's allow-all keep it."""
    rc = RobotsCompliance(
        {"b.example.com": DISALLOW_ALL, "example.com": ALLOW_ALL}, user_agents=["GPTBot", "*"], host_fallback="parents"
    )
    url = "https://a.b.example.com/x"
    assert rc.is_compliant(url) is False
    assert rc.policy_for_url(url).robots_key == "b.example.com"
    assert rc.is_compliant_batch([url]) == [False]


def test_prefix_cache_does_not_change_decisions_of_urls_with_query_fragment_or_params_before_the_path():
    """The batch path caches a host policy per URL prefix ("https://host:port"); a prefix holding `?`, `#` or `;`
    is not a plain authority and must not be cached, else the same URL is decided differently once the cache is warm
    (`https://a.com:80;x/private`: kept cold, dropped warm when such prefixes are cached)."""
    store = {"a.com": "User-agent: *\nDisallow: /private\n", "b.com": DISALLOW_ALL}
    urls = [
        "https://a.com:80;x/private",
        "http://a.com;x/private",
        "http://a.com;x/public",
        "http://a.com?q/private",
        "http://a.com?q",
        "http://a.com#f/private",
        "http://a.com;/private",
        "http://b.com;x/ok",
        "http://a.com;x/private?y",
    ]
    cold = [RobotsCompliance(store, user_agents=["*"]).is_compliant(u) for u in urls]
    cold_batch = [RobotsCompliance(store, user_agents=["*"]).is_compliant_batch([u])[0] for u in urls]
    rc = RobotsCompliance(store, user_agents=["*"])
    first = rc.is_compliant_batch(urls)
    singles = [rc.is_compliant(u) for u in urls]
    warm = rc.is_compliant_batch(urls)
    assert cold == cold_batch == first == singles == warm
