"""robots.txt decisions: RFC 9309 semantics through Protego, the per-host cache, URL and host normalisation."""

import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protego import Protego

from hf_ext.compliance import DEFAULT_AI_USER_AGENTS, RobotsCompliance, RobotsTxtStore, normalize_host
from hf_ext.compliance.robots import protego_disallowed_agents

HOST = "example.com"


def checker(robots: str | bytes | None, agents=DEFAULT_AI_USER_AGENTS, **kwargs) -> RobotsCompliance:
    return RobotsCompliance({HOST: robots}, user_agents=agents, **kwargs)


def test_default_agents_match_the_compliance_list():
    for agent in ("GPTBot", "CCBot", "CCBot/2.0", "ClaudeBot", "Google-Extended", "Applebot-Extended", "*"):
        assert agent in DEFAULT_AI_USER_AGENTS
    assert "anthropic-ai" not in DEFAULT_AI_USER_AGENTS


def test_agent_block_removes_every_url_of_the_host():
    c = checker("User-agent: GPTBot\nDisallow: /\n")
    assert c.disallowed_agents("https://example.com/any/page?x=1") == ("GPTBot",)
    assert not c.is_compliant("https://example.com/")
    assert c.is_compliant("https://other.org/any/page")  # no robots.txt: kept


def test_longest_match_wins_and_allow_wins_ties():
    c = checker("User-agent: *\nDisallow: /docs/\nAllow: /docs/public/\nDisallow: /docs/public/secret\n")
    assert not c.is_compliant("https://example.com/docs/a.html")
    assert c.is_compliant("https://example.com/docs/public/a.html")
    assert not c.is_compliant("https://example.com/docs/public/secret.html")
    # equal-length Allow and Disallow: Allow wins (RFC 9309)
    tie = checker("User-agent: *\nDisallow: /page\nAllow: /page\n")
    assert tie.is_compliant("https://example.com/page")
    # rule order in the file does not matter, only length
    reordered = checker("User-agent: *\nAllow: /docs/public/\nDisallow: /docs/\n")
    assert reordered.is_compliant("https://example.com/docs/public/x")


def test_wildcards_and_end_anchor():
    c = checker("User-agent: GPTBot\nDisallow: /private/*.pdf$\nDisallow: /*/drafts/\n")
    assert not c.is_compliant("https://example.com/private/a/b.pdf")
    assert c.is_compliant("https://example.com/private/a/b.pdf?download=1")  # `$` anchors the end
    assert c.is_compliant("https://example.com/private/b.pdf.html")
    assert not c.is_compliant("https://example.com/2024/drafts/post")
    assert c.is_compliant("https://example.com/drafts/post")  # `/*/` needs a segment before


def test_agent_names_match_case_insensitively_and_versioned_tokens():
    c = checker("user-agent: gptbot\ndisallow: /a\n\nUSER-AGENT: CCBOT/2.0\nDISALLOW: /b\n")
    assert c.disallowed_agents("https://example.com/a") == ("GPTBot",)
    # RFC 9309 product tokens: "CCBOT/2.0" in robots.txt and every checked CCBot variant are the token "ccbot"
    assert c.disallowed_agents("https://example.com/b") == ("CCBot", "CCBot/2.0", "CCBot/1.0")


def test_star_group_is_the_fallback_and_named_groups_override_it():
    robots = "User-agent: *\nDisallow: /closed/\n\nUser-agent: GPTBot\nAllow: /\n"
    only_gpt = checker(robots, agents=["GPTBot"])
    assert only_gpt.is_compliant("https://example.com/closed/x")  # GPTBot's own group allows everything
    only_claude = checker(robots, agents=["ClaudeBot"])
    assert not only_claude.is_compliant("https://example.com/closed/x")  # no ClaudeBot group: `*` applies
    default = checker(robots)
    assert not default.is_compliant("https://example.com/closed/x")
    assert "GPTBot" not in default.disallowed_agents("https://example.com/closed/x")
    assert "*" in default.disallowed_agents("https://example.com/closed/x")


def test_non_ai_blocks_are_ignored():
    c = checker("User-agent: Googlebot\nDisallow: /\n\nUser-agent: Bingbot\nDisallow: /\n")
    assert c.is_compliant("https://example.com/page")


def test_urls_with_ports_userinfo_case_and_trailing_dots():
    c = checker("User-agent: *\nDisallow: /x\n")
    for url in (
        "https://example.com:8443/x/1",
        "http://user:pw@EXAMPLE.com/x",
        "https://Example.COM./x",
        "//example.com/x",
    ):
        assert not c.is_compliant(url), url
    assert c.is_compliant("https://example.com:8443/y")


def test_query_strings_are_part_of_the_matched_path():
    c = checker("User-agent: *\nDisallow: /*?session=\nDisallow: /search?\n")
    assert not c.is_compliant("https://example.com/page?session=abc")
    assert c.is_compliant("https://example.com/page?lang=en")
    assert not c.is_compliant("https://example.com/search?q=robots")
    assert c.is_compliant("https://example.com/search")
    assert c.is_compliant("https://example.com/page#session=abc")  # fragments are not matched


def test_idn_hosts_match_in_unicode_and_punycode():
    assert normalize_host("https://Bücher.Example/x") == "xn--bcher-kva.example"
    for key in ("bücher.example", "xn--bcher-kva.example"):
        c = RobotsCompliance({key: "User-agent: GPTBot\nDisallow: /\n"})
        assert not c.is_compliant("https://bücher.example/katalog")
        assert not c.is_compliant("https://xn--bcher-kva.example/katalog")
        assert not c.is_compliant("https://BÜCHER.example:443/katalog?q=ä")


def test_non_ascii_paths_are_matched_percent_encoded():
    c = checker("User-agent: *\nDisallow: /caf%C3%A9/\n")
    assert not c.is_compliant("https://example.com/café/menu")
    assert not c.is_compliant("https://example.com/caf%c3%a9/menu")


def test_host_fallback_options():
    robots = {"example.com": "User-agent: *\nDisallow: /\n"}
    assert RobotsCompliance(robots, host_fallback="exact").is_compliant("https://www.example.com/a")
    assert not RobotsCompliance(robots, host_fallback="www").is_compliant("https://www.example.com/a")
    assert RobotsCompliance(robots, host_fallback="www").is_compliant("https://blog.example.com/a")
    assert not RobotsCompliance(robots, host_fallback="parents").is_compliant("https://a.blog.example.com/a")
    # the host's own robots.txt wins over a parent's
    both = {**robots, "blog.example.com": "User-agent: *\nAllow: /\n"}
    assert RobotsCompliance(both, host_fallback="parents").is_compliant("https://blog.example.com/a")


def test_missing_robots_and_missing_urls():
    c = RobotsCompliance({HOST: None})
    assert c.is_compliant("https://example.com/anything")
    assert c.is_compliant(None) and c.is_compliant("")
    strict = RobotsCompliance({}, missing_url="drop")
    assert not strict.is_compliant(None)
    assert strict.is_compliant_batch(["https://a.org/", None]) == [True, False]
    assert c.is_compliant("not a url at all")


def test_robots_txt_itself_is_always_allowed():
    c = checker("User-agent: *\nDisallow: /\n")
    assert c.is_compliant("https://example.com/robots.txt")
    assert not c.is_compliant("https://example.com/robots.txt.bak")


def test_empty_and_malformed_files_allow_everything():
    for robots in ("", "\n\n", b"\xff\xfe\x00garbage", "<html><body>404</body></html>", "Disallow: /\n", "::::\n"):
        c = checker(robots)
        assert c.is_compliant("https://example.com/page"), robots


def test_batch_equals_single_calls_and_cache_is_per_host():
    c = checker("User-agent: *\nDisallow: /a\n")
    urls = [f"https://example.com/{p}" for p in ("a", "b", "a/c", "")] + ["https://other.org/a", None]
    assert c.is_compliant_batch(urls) == [c.is_compliant(u) for u in urls]
    assert c.disallowed_agents_batch(urls) == [c.disallowed_agents(u) for u in urls]
    assert c.num_cached_hosts == 2
    restored = pickle.loads(pickle.dumps(c))
    assert restored.num_cached_hosts == 0
    assert restored.is_compliant_batch(urls) == c.is_compliant_batch(urls)


def test_bounded_cache_still_decides_correctly():
    robots = {f"h{i}.org": f"User-agent: *\nDisallow: /{i}\n" for i in range(10)}
    c = RobotsCompliance(robots, max_cached_hosts=3)
    urls = [f"https://h{i}.org/{j}" for i in range(10) for j in range(10)] * 2
    expected = [not u.endswith(f"/{u.split('.org')[0][len('https://h'):]}") for u in urls]
    assert c.is_compliant_batch(urls) == expected
    assert c.num_cached_hosts <= 3


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="robots"):
        RobotsCompliance(["example.com"])
    with pytest.raises(ValueError, match="user_agents"):
        RobotsCompliance({}, user_agents=[])
    with pytest.raises(TypeError, match="user_agents"):
        RobotsCompliance({}, user_agents="GPTBot")
    with pytest.raises(ValueError, match="host_fallback"):
        RobotsCompliance({}, host_fallback="registrable")
    with pytest.raises(ValueError, match="missing_url"):
        RobotsCompliance({}, missing_url="maybe")
    with pytest.raises(ValueError, match="max_cached_hosts"):
        RobotsCompliance({}, max_cached_hosts=0)
    with pytest.raises(TypeError, match="url"):
        RobotsCompliance({}).is_compliant(42)
    with pytest.raises(TypeError, match="urls"):
        RobotsCompliance({}).is_compliant_batch("https://example.com/")


# ---------------------------------------------------------------------------------------------------------------
# Fuzzing: no robots.txt crashes the checker, and the cached decision equals asking Protego for every agent.

AGENT_TOKENS = ["*", "GPTBot", "gptbot", "CCBot", "CCBot/2.0", "ClaudeBot", "Googlebot", "Google-Extended", "bot", "x*"]
PATH_ALPHABET = "/ab.?=*$%-_é"
path_text = st.text(alphabet=PATH_ALPHABET, max_size=12)
line = st.one_of(
    st.builds(lambda a: f"User-agent: {a}", st.sampled_from(AGENT_TOKENS)),
    st.builds(lambda d, p: f"{d}: {p}", st.sampled_from(["Allow", "Disallow", "disallow", "Dissallow", "ALLOW"]),
              path_text),
    st.sampled_from(["", "# comment", "Sitemap: https://example.com/s.xml", "Crawl-delay: 5", "Host: x", ":", "\x00"]),
    st.text(max_size=20),
)
robots_text = st.lists(line, max_size=14).map("\n".join)
urls = st.builds(lambda p, q: f"https://example.com/{p}" + (f"?{q}" if q else ""), path_text, path_text)


def test_the_documented_paper_pipeline_settings_reproduce_its_exact_host_lookup():
    """docs/compliance.md said `status_policy="paper"` plus `backend="protego"` reproduced the paper pipeline's
    decisions one for one; that pipeline looks a URL's host up as is (Protego on the exact host's record), so the
    default `host_fallback="www"` drops pages it keeps. The docs now name `host_fallback="exact"` as well."""
    import re
    from pathlib import Path
    from urllib.parse import urlparse

    robots = {"example.com": "User-agent: GPTBot\nDisallow: /\n", "www.other.org": "User-agent: *\nDisallow: /\n"}
    urls = ["https://www.example.com/article", "https://other.org/page", "https://example.com/article"]

    def reference(url):
        text = robots.get(urlparse(url).hostname)
        return () if text is None else protego_disallowed_agents(Protego.parse(text), url, DEFAULT_AI_USER_AGENTS)

    documented = RobotsCompliance(robots, backend="protego", status_policy="paper", host_fallback="exact")
    assert [documented.disallowed_agents(u) for u in urls] == [reference(u) for u in urls]
    default = RobotsCompliance(robots, backend="protego", status_policy="paper")
    assert [bool(default.disallowed_agents(u)) for u in urls] == [True, True, True]  # the reference keeps two
    docs = re.sub(r"\s+", " ", (Path(__file__).parents[2] / "docs" / "compliance.md").read_text(encoding="utf-8"))
    assert "reproduce that pipeline's decisions one for one" not in docs and "decision for decision" not in docs
    assert 'add `backend="protego"` and `host_fallback="exact"`' in docs


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(robots=robots_text, url_list=st.lists(urls, min_size=1, max_size=6))
def test_fuzz_cached_decisions_equal_protego_per_agent(robots, url_list):
    c = checker(robots, backend="protego")
    reference = Protego.parse(robots)
    for url in url_list:
        assert c.disallowed_agents(url) == protego_disallowed_agents(reference, url, DEFAULT_AI_USER_AGENTS)


@settings(max_examples=150, deadline=None)
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300)), url=st.text(max_size=40))
def test_fuzz_arbitrary_bytes_and_urls_never_crash(raw, url):
    c = RobotsCompliance(RobotsTxtStore.from_dict({HOST: raw}))
    assert isinstance(c.is_compliant(f"https://example.com/{url}"), bool)
    assert isinstance(c.is_compliant(url), bool)


def test_identical_robots_texts_are_parsed_once():
    text = "User-agent: *\nDisallow: /private/\n"
    c = RobotsCompliance({"a.org": text, "b.org": text, "c.org": text + "\n"})
    assert c.is_compliant_batch(["https://a.org/private/x", "https://b.org/ok", "https://c.org/private/"]) == [
        False, True, False,
    ]
    assert c.policy("a.org").parser is c.policy("b.org").parser
    assert c.policy("a.org").parser is not c.policy("c.org").parser


URL_FORMS = st.sampled_from(
    ["https://example.com{p}", "http://Example.com:8080{p}", "example.com{p}", "//example.com{p}", "https://example.com{q}"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(robots=robots_text, forms=st.lists(st.tuples(URL_FORMS, path_text), min_size=1, max_size=6))
def test_fuzz_rfc9309_cache_equals_the_engine_per_agent(robots, forms):
    from hf_ext.compliance import RobotsTxt

    urls = [form.format(p="/" + p.lstrip("/"), q="?" + p + "#f") for form, p in forms]
    reference = RobotsTxt.parse(robots)
    expected = [tuple(a for a in DEFAULT_AI_USER_AGENTS if not reference.allowed(u, a)) for u in urls]
    for bound in (None, 1):
        c = checker(robots, max_cached_hosts=bound)
        assert c.disallowed_agents_batch(urls) == expected
        assert [c.disallowed_agents(u) for u in urls] == expected
