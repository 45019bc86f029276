"""Mutation pass mu49: tests that kill surviving mutants of the RFC 9309 parser and matcher (hf_ext.compliance.rfc9309)."""

from hf_ext.compliance.rfc9309 import RobotsTxt


def test_a_star_followed_by_letters_is_not_the_global_group():
    """`User-agent: *bot` names no crawler (its product token is empty), as in Google's parser: it is not the `*`
    group. Only a `*` alone or followed by whitespace is; the rules of `*bot` apply to nobody."""
    robots = RobotsTxt.parse("User-agent: *bot\nDisallow: /\n")
    assert robots.allowed("/page", "FooBot")
    assert robots.allowed("/page", "*")
    # a `*` followed by whitespace and more text is still the global group
    assert not RobotsTxt.parse("User-agent: *\tcomment\nDisallow: /\n").allowed("/page", "FooBot")
    assert not RobotsTxt.parse("User-agent: *\nDisallow: /\n").allowed("/page", "FooBot")


def test_robots_txt_is_allowed_by_the_parsed_rules_themselves():
    """RFC 9309 section 2.2.2: /robots.txt is implicitly allowed. `RobotsTxt.allowed` (not only the checker layer
    above it) must say so, also under `Disallow: /`; a longer path that starts the same is not exempt."""
    robots = RobotsTxt.parse("User-agent: *\nDisallow: /\n")
    assert robots.allowed("https://example.com/robots.txt", "FooBot")
    assert robots.allowed("/robots.txt", "*")
    assert not robots.allowed("/robots.txt.bak", "FooBot")
    assert not robots.allowed("/robots.txt/x", "FooBot")
