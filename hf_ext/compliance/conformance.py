"""A robots.txt conformance table: RFC 9309 text and the reference parser's behaviour, run against every engine.

Each `Case` is one decision (robots.txt, crawler, URL -> allowed?). `expected` follows RFC 9309 where the RFC
decides, and Google's reference parser (written by the RFC's authors) where the RFC leaves room; `basis` says which.
`run_conformance()` asks each engine for every case and `conformance_table()` renders the result as Markdown; the
test suite runs both, and docs/compliance.md records the outcome and every case where engines disagree.

Engines, each used as its authors intend:

* `"hf_ext"`: `hf_ext.compliance.rfc9309.RobotsTxt` (the default backend of `RobotsCompliance`);
* `"protego"`: `Protego.parse(text).can_fetch(url, agent)` (the data-compliance paper's pipeline);
* `"google"`: Google's C++ parser through `fast-robotstxt` (`robotstxt.RobotsMatcher`), given what its
  documentation asks of the caller: the crawler's product token and a URL whose non-ASCII octets are percent-encoded.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .rfc9309 import RobotsTxt, product_token

__all__ = [
    "CASES",
    "ENGINES",
    "STATUS_CASES",
    "Case",
    "available_engines",
    "conformance_table",
    "run_conformance",
    "run_status_conformance",
]


@dataclass(frozen=True)
class Case:
    """One conformance decision.

    Args:
        id (`str`): Short unique name.
        topic (`str`): Line syntax, grouping, agents, matching, encoding, BOM, long lines, size.
        robots (`str | bytes`): The robots.txt body.
        agent (`str`): The crawler's name.
        url (`str`): The URL asked about.
        expected (`bool`): Whether the crawler may fetch the URL.
        basis (`str`): Where `expected` comes from (an RFC 9309 section, or "reference parser" where the RFC is
            silent).
    """

    id: str
    topic: str
    robots: str | bytes
    agent: str
    url: str
    expected: bool
    basis: str


_U = "http://example.com"
_LIMIT = 8 * 2083 - 1  # bytes of one line the reference parser keeps
_LONG = "/" + "a" * (_LIMIT - len("Disallow: ") - 1)  # a path whose Disallow line is exactly at the limit
_LONG_ALLOW = "/" + "a" * (_LIMIT - len("Allow: ") - 1)
_GROUPS = (
    "Disallow: /orphan/\n"
    "User-agent: AlphaBot\nDisallow: /\nAllow: /a/\n"
    "User-agent: BetaBot\nDisallow: /\nAllow: /b/\n\nAllow: /c/\n"
    "User-agent: GammaBot\nUser-agent: AlphaBot\nAllow: /g/\nDisallow: /\n"
)

CASES: tuple[Case, ...] = (
    # --- line syntax -------------------------------------------------------------------------------------------
    Case("colon", "syntax", "User-agent: FooBot\nDisallow: /\n", "FooBot", f"{_U}/x", False, "RFC 9309 2.1"),
    Case("missing-colon", "syntax", "user-agent FooBot\ndisallow /\n", "FooBot", f"{_U}/x", False, "reference parser"),
    Case(
        "missing-colon-3-words",
        "syntax",
        "User-agent: FooBot\nDisallow / x\n",
        "FooBot",
        f"{_U}/x",
        True,
        "reference parser",
    ),
    Case(
        "keys-case-insensitive",
        "syntax",
        "USER-AGENT: FooBot\nDISALLOW: /x/\nallow: /x/ok\n",
        "FooBot",
        f"{_U}/x/no",
        False,
        "RFC 9309 2.1",
    ),
    Case(
        "keys-case-insensitive-allow",
        "syntax",
        "USER-AGENT: FooBot\nDISALLOW: /x/\nallow: /x/ok\n",
        "FooBot",
        f"{_U}/x/ok",
        True,
        "RFC 9309 2.1",
    ),
    Case(
        "inline-comment",
        "syntax",
        "User-agent: FooBot\nDisallow: /x # private\n",
        "FooBot",
        f"{_U}/x/y",
        False,
        "RFC 9309 2.2.3",
    ),
    Case(
        "disallow-typo", "syntax", "User-agent: FooBot\nDissallow: /\n", "FooBot", f"{_U}/x", False, "reference parser"
    ),
    Case(
        "user-agent-typo",
        "syntax",
        "User agent: FooBot\nDisallow: /\n",
        "FooBot",
        f"{_U}/x",
        False,
        "reference parser",
    ),
    Case(
        "cr-line-endings",
        "syntax",
        "User-agent: FooBot\rDisallow: /\r",
        "FooBot",
        f"{_U}/x",
        False,
        "RFC 9309 2.2 (EOL)",
    ),
    Case(
        "crlf-line-endings",
        "syntax",
        "User-agent: FooBot\r\nDisallow: /\r\n",
        "FooBot",
        f"{_U}/x",
        False,
        "RFC 9309 2.2 (EOL)",
    ),
    Case("rules-outside-groups", "syntax", "Disallow: /\n", "FooBot", f"{_U}/x", True, "RFC 9309 2.1"),
    # --- grouping ----------------------------------------------------------------------------------------------
    Case("group-own-allow", "groups", _GROUPS, "AlphaBot", f"{_U}/a/1", True, "RFC 9309 2.1"),
    Case("group-merged-same-agent", "groups", _GROUPS, "AlphaBot", f"{_U}/g/1", True, "RFC 9309 2.2.1"),
    Case("group-other-agent-rules", "groups", _GROUPS, "AlphaBot", f"{_U}/b/1", False, "RFC 9309 2.1"),
    Case("group-blank-line-does-not-end", "groups", _GROUPS, "BetaBot", f"{_U}/c/1", True, "RFC 9309 2.1"),
    Case("group-shared-two-agents", "groups", _GROUPS, "GammaBot", f"{_U}/a/1", False, "RFC 9309 2.1"),
    Case("rule-before-any-group-ignored", "groups", _GROUPS, "DeltaBot", f"{_U}/orphan/1", True, "RFC 9309 2.1"),
    Case(
        "unknown-line-keeps-group",
        "groups",
        "User-agent: FooBot\nCrawl-delay: 5\nUser-agent: BarBot\nDisallow: /x\n",
        "FooBot",
        f"{_U}/x",
        False,
        "RFC 9309 2.1",
    ),
    Case(
        "sitemap-keeps-group",
        "groups",
        "User-agent: FooBot\nSitemap: http://example.com/s.xml\nUser-agent: *\nDisallow: /\n",
        "FooBot",
        f"{_U}/x",
        False,
        "RFC 9309 2.1",
    ),
    Case(
        "rule-ends-group",
        "groups",
        "User-agent: FooBot\nDisallow: /x\nUser-agent: BarBot\nDisallow: /y\n",
        "FooBot",
        f"{_U}/y",
        True,
        "RFC 9309 2.1",
    ),
    Case(
        "same-agent-groups-combined",
        "groups",
        "User-agent: FooBot\nDisallow: /a\n\nUser-agent: BarBot\nDisallow: /\n\nUser-agent: FooBot\nDisallow: /b\n",
        "FooBot",
        f"{_U}/b",
        False,
        "RFC 9309 2.2.1",
    ),
    # --- user agents -------------------------------------------------------------------------------------------
    Case(
        "agent-case-insensitive",
        "agents",
        "User-agent: FOOBOT\nDisallow: /x\n",
        "foobot",
        f"{_U}/x",
        False,
        "RFC 9309 2.2.1",
    ),
    Case(
        "agent-token-not-prefix",
        "agents",
        "User-agent: Applebot\nDisallow: /\n",
        "Applebot-Extended",
        f"{_U}/x",
        True,
        "RFC 9309 2.2.1",
    ),
    Case(
        "agent-token-not-prefix-2",
        "agents",
        "User-agent: Google\nDisallow: /\n",
        "Google-Extended",
        f"{_U}/x",
        True,
        "RFC 9309 2.2.1",
    ),
    Case(
        "agent-exact-token",
        "agents",
        "User-agent: Applebot-Extended\nDisallow: /\n",
        "Applebot-Extended",
        f"{_U}/x",
        False,
        "RFC 9309 2.2.1",
    ),
    Case(
        "crawler-version-suffix",
        "agents",
        "User-agent: CCBot\nDisallow: /\n",
        "CCBot/2.0",
        f"{_U}/x",
        False,
        "RFC 9309 2.2.1",
    ),
    Case(
        "group-version-suffix",
        "agents",
        "User-agent: CCBot/1.0\nDisallow: /\n",
        "CCBot",
        f"{_U}/x",
        False,
        "reference parser",
    ),
    Case(
        "agent-first-word",
        "agents",
        "User-agent: FOO BAR\nDisallow: /x\n",
        "Foo",
        f"{_U}/x",
        False,
        "reference parser",
    ),
    Case(
        "agent-second-word",
        "agents",
        "User-agent: FOO BAR\nDisallow: /x\n",
        "Bar",
        f"{_U}/x",
        True,
        "reference parser",
    ),
    Case(
        "star-fallback",
        "agents",
        "User-agent: *\nDisallow: /x\n\nUser-agent: BarBot\nAllow: /\n",
        "FooBot",
        f"{_U}/x",
        False,
        "RFC 9309 2.2.1",
    ),
    Case(
        "specific-beats-star",
        "agents",
        "User-agent: *\nDisallow: /x\n\nUser-agent: BarBot\nAllow: /\n",
        "BarBot",
        f"{_U}/x",
        True,
        "RFC 9309 2.2.1",
    ),
    Case(
        "specific-group-empty-rules",
        "agents",
        "User-agent: BarBot\nDisallow:\n\nUser-agent: *\nDisallow: /\n",
        "BarBot",
        f"{_U}/x",
        True,
        "RFC 9309 2.2.1",
    ),
    Case(
        "star-prefix-is-not-star",
        "agents",
        "User-agent: *bot\nDisallow: /\n",
        "FooBot",
        f"{_U}/x",
        True,
        "reference parser",
    ),
    Case(
        "non-ascii-agent-line",
        "agents",
        "User-agent: ツBot\nDisallow: /\n",
        "FooBot",
        f"{_U}/x",
        True,
        "RFC 9309 2.2.1",
    ),
    # --- matching ----------------------------------------------------------------------------------------------
    Case(
        "path-case-sensitive",
        "matching",
        "User-agent: *\nDisallow: /X/\n",
        "FooBot",
        f"{_U}/x/page",
        True,
        "RFC 9309 2.2.2",
    ),
    Case(
        "longest-allow",
        "matching",
        "User-agent: *\nAllow: /x/page\nDisallow: /x/\n",
        "FooBot",
        f"{_U}/x/page.html",
        True,
        "RFC 9309 2.2.2",
    ),
    Case(
        "longest-disallow",
        "matching",
        "User-agent: *\nAllow: /x/\nDisallow: /x/page\n",
        "FooBot",
        f"{_U}/x/page.html",
        False,
        "RFC 9309 2.2.2",
    ),
    Case(
        "tie-allow-wins",
        "matching",
        "User-agent: *\nDisallow: /x\nAllow: /x\n",
        "FooBot",
        f"{_U}/x",
        True,
        "RFC 9309 2.2.2",
    ),
    Case(
        "wildcard-longer-pattern-wins",
        "matching",
        "User-agent: *\nAllow: /page\nDisallow: /*.html\n",
        "FooBot",
        f"{_U}/page.html",
        False,
        "RFC 9309 2.2.2",
    ),
    Case("empty-disallow", "matching", "User-agent: FooBot\nDisallow:\n", "FooBot", f"{_U}/x", True, "RFC 9309 2.2.2"),
    Case(
        "dollar-root-only",
        "matching",
        "User-agent: *\nAllow: /$\nDisallow: /\n",
        "FooBot",
        f"{_U}/",
        True,
        "RFC 9309 2.2.3",
    ),
    Case(
        "dollar-root-only-2",
        "matching",
        "User-agent: *\nAllow: /$\nDisallow: /\n",
        "FooBot",
        f"{_U}/page",
        False,
        "RFC 9309 2.2.3",
    ),
    Case("url-without-path", "matching", "User-agent: *\nDisallow: /$\n", "FooBot", _U, False, "RFC 9309 2.2.2"),
    Case(
        "star-in-middle",
        "matching",
        "User-agent: *\nDisallow: /fish*.php\n",
        "FooBot",
        f"{_U}/fishheads/catfish.php?x",
        False,
        "RFC 9309 2.2.3",
    ),
    Case(
        "dollar-end",
        "matching",
        "User-agent: *\nDisallow: /*.php$\n",
        "FooBot",
        f"{_U}/a.php",
        False,
        "RFC 9309 2.2.3",
    ),
    Case(
        "dollar-end-query",
        "matching",
        "User-agent: *\nDisallow: /*.php$\n",
        "FooBot",
        f"{_U}/a.php?x=1",
        True,
        "RFC 9309 2.2.3",
    ),
    Case(
        "dollar-in-middle-literal",
        "matching",
        "User-agent: *\nDisallow: /a$b\n",
        "FooBot",
        f"{_U}/a$b",
        False,
        "reference parser",
    ),
    Case(
        "encoded-star-literal",
        "matching",
        "User-agent: *\nDisallow: /path/file-with-a-%2A.html\n",
        "FooBot",
        f"{_U}/path/file-with-a-*.html",
        False,
        "RFC 9309 2.2.3",
    ),
    Case(
        "encoded-dollar-literal",
        "matching",
        "User-agent: *\nDisallow: /path/foo-%24\n",
        "FooBot",
        f"{_U}/path/foo-$",
        False,
        "RFC 9309 2.2.3",
    ),
    Case(
        "star-only-pattern", "matching", "User-agent: *\nDisallow: *\n", "FooBot", f"{_U}/any", False, "RFC 9309 2.2.3"
    ),
    Case(
        "query-is-matched",
        "matching",
        "User-agent: *\nDisallow: /*?sid=\n",
        "FooBot",
        f"{_U}/p?sid=1",
        False,
        "RFC 9309 2.2.2",
    ),
    Case(
        "fragment-ignored",
        "matching",
        "User-agent: *\nDisallow: /p$\n",
        "FooBot",
        f"{_U}/p#top",
        False,
        "RFC 9309 2.2.2",
    ),
    Case(
        "index-html-is-directory",
        "matching",
        "User-agent: *\nAllow: /d/index.html\nDisallow: /d/\n",
        "FooBot",
        f"{_U}/d/",
        True,
        "reference parser",
    ),
    Case(
        "robots-txt-always-allowed",
        "matching",
        "User-agent: *\nDisallow: /\n",
        "FooBot",
        f"{_U}/robots.txt",
        True,
        "RFC 9309 2.2.2",
    ),
    # --- encoding ----------------------------------------------------------------------------------------------
    Case(
        "raw-rule-encoded-url",
        "encoding",
        "User-agent: *\nDisallow: /ツ\n",
        "FooBot",
        f"{_U}/%E3%83%84",
        False,
        "RFC 9309 2.2.2",
    ),
    Case(
        "encoded-rule-raw-url",
        "encoding",
        "User-agent: *\nDisallow: /%E3%83%84\n",
        "FooBot",
        f"{_U}/ツ",
        False,
        "RFC 9309 2.2.2",
    ),
    Case(
        "raw-rule-raw-url",
        "encoding",
        "User-agent: *\nDisallow: /café\n",
        "FooBot",
        f"{_U}/café/menu",
        False,
        "RFC 9309 2.2.2",
    ),
    Case(
        "lower-hex-rule",
        "encoding",
        "User-agent: *\nDisallow: /%e3%83%84\n",
        "FooBot",
        f"{_U}/%E3%83%84",
        False,
        "RFC 9309 2.2.2",
    ),
    Case(
        "lower-hex-url",
        "encoding",
        "User-agent: *\nDisallow: /%E3%83%84\n",
        "FooBot",
        f"{_U}/%e3%83%84",
        False,
        "RFC 9309 2.2.2 (RFC 3986 6.2.2.1)",
    ),
    Case(
        "unreserved-encoded-rule",
        "encoding",
        "User-agent: *\nDisallow: /%62%61%7A\n",
        "FooBot",
        f"{_U}/baz",
        False,
        "RFC 9309 2.2.2",
    ),
    Case(
        "unreserved-encoded-url",
        "encoding",
        "User-agent: *\nDisallow: /baz\n",
        "FooBot",
        f"{_U}/%62%61%7A",
        False,
        "RFC 9309 2.2.2",
    ),
    Case(
        "reserved-encoded-stays",
        "encoding",
        "User-agent: *\nDisallow: /a/b\n",
        "FooBot",
        f"{_U}/a%2Fb",
        True,
        "RFC 9309 2.2.2",
    ),
    Case(
        "unencoded-query-url",
        "encoding",
        "User-agent: *\nDisallow: /f?u=http://x.y\n",
        "FooBot",
        f"{_U}/f?u=http://x.y/z",
        False,
        "RFC 9309 2.2.2",
    ),
    # --- byte order mark ---------------------------------------------------------------------------------------
    Case(
        "bom", "bom", b"\xef\xbb\xbfUser-agent: FooBot\nDisallow: /\n", "FooBot", f"{_U}/x", False, "reference parser"
    ),
    Case(
        "partial-bom-2",
        "bom",
        b"\xef\xbbUser-agent: FooBot\nDisallow: /\n",
        "FooBot",
        f"{_U}/x",
        False,
        "reference parser",
    ),
    Case(
        "partial-bom-1",
        "bom",
        b"\xefUser-agent: FooBot\nDisallow: /\n",
        "FooBot",
        f"{_U}/x",
        False,
        "reference parser",
    ),
    Case(
        "broken-bom-spoils-first-line",
        "bom",
        b"\x11\xbfUser-agent: FooBot\nDisallow: /\n",
        "FooBot",
        f"{_U}/x",
        True,
        "reference parser",
    ),
    # --- long lines and size -----------------------------------------------------------------------------------
    Case(
        "long-line-cut",
        "long lines",
        f"User-agent: FooBot\nDisallow: {_LONG}b\n",
        "FooBot",
        f"{_U}{_LONG}c",
        False,
        "reference parser",
    ),
    Case(
        "long-line-other-url",
        "long lines",
        f"User-agent: FooBot\nDisallow: {_LONG}b\n",
        "FooBot",
        f"{_U}/fux",
        True,
        "reference parser",
    ),
    Case(
        "long-allow-cut",
        "long lines",
        f"User-agent: FooBot\nDisallow: /\nAllow: {_LONG_ALLOW}b\n",
        "FooBot",
        f"{_U}{_LONG_ALLOW}c",
        True,
        "reference parser",
    ),
    Case(
        "beyond-500-kib-ignored",
        "size",
        "User-agent: FooBot\n" + ("#" + "x" * 998 + "\n") * 520 + "Disallow: /\n",
        "FooBot",
        f"{_U}/x",
        True,
        "RFC 9309 2.5",
    ),
)


#: HTTP status cases (RFC 9309 section 2.3.1): `(id, status, error, expected allowed)` for a host whose robots.txt,
#: when fetched with 2xx, would allow the URL. Parsers never see the status: `RobotsCompliance` applies it for every
#: backend (`status_policy="rfc9309"`).
STATUS_CASES: tuple[tuple[str, int | None, str | None, bool], ...] = (
    ("200-available", 200, None, True),
    ("301-unresolved-redirect", 301, None, True),
    ("404-unavailable", 404, None, True),
    ("410-unavailable", 410, None, True),
    ("429-is-4xx", 429, None, True),
    ("500-unreachable", 500, None, False),
    ("503-unreachable", 503, None, False),
    ("network-error-unreachable", None, "ConnectionRefusedError", False),
    ("no-status-no-body", None, None, True),
)


def run_status_conformance(backends: Iterable[str] | None = None) -> dict[str, dict[str, bool]]:
    """Decide every `STATUS_CASES` entry through `RobotsCompliance` with each backend.

    Returns:
        `{backend: {case id: decision}}` (`True`: allowed).
    """
    from .robots import RobotsCompliance
    from .store import RobotsTxtStore

    engines = available_engines()
    names = (
        list(backends)
        if backends is not None
        else [b for b, e in (("rfc9309", "hf_ext"), ("protego", "protego"), ("google", "google")) if e in engines]
    )
    out: dict[str, dict[str, bool]] = {}
    for backend in names:
        out[backend] = {}
        for case_id, status, error, _ in STATUS_CASES:
            store = RobotsTxtStore()
            body = "User-agent: *\nDisallow: /private/\n" if status is not None and 200 <= status < 300 else None
            store.add("example.com", body, "2025-01-15", status, error)
            checker = RobotsCompliance(store, user_agents=["FooBot"], backend=backend)
            out[backend][case_id] = checker.is_compliant("http://example.com/page")
    return out


def _hf_ext(robots: str | bytes, agent: str, url: str) -> bool:
    return RobotsTxt.parse(robots).allowed(url, agent)


def _protego(robots: str | bytes, agent: str, url: str) -> bool:
    from protego import Protego

    text = robots.decode("utf-8", errors="replace") if isinstance(robots, bytes) else robots
    return Protego.parse(text).can_fetch(url, agent)


def _google(robots: str | bytes, agent: str, url: str) -> bool:
    from robotstxt import robots as binding

    body = robots if isinstance(robots, bytes) else robots.encode("utf-8")
    token = product_token(agent).encode() or agent.encode()
    # The caller percent-encodes the URL (the parser's documented contract); only non-ASCII octets need it here.
    quoted = urllib.parse.quote(url, safe="".join(chr(i) for i in range(33, 127))).encode()
    lib = binding._lib
    matcher = lib.robots_matcher_create()
    try:  # the C API takes raw bytes, so byte-order-mark cases reach the parser unchanged
        return bool(lib.robots_allowed_by_robots(matcher, body, len(body), token, len(token), quoted, len(quoted)))
    finally:
        lib.robots_matcher_free(matcher)


ENGINES: dict[str, Callable[[str | bytes, str, str], bool]] = {
    "hf_ext": _hf_ext,
    "protego": _protego,
    "google": _google,
}


def available_engines() -> list[str]:
    """The engines whose package is installed (`google` needs `fast-robotstxt`)."""
    names = ["hf_ext", "protego"]
    try:
        import robotstxt  # noqa: F401

        names.append("google")
    except ImportError:
        pass
    return names


def run_conformance(engines: Iterable[str] | None = None, cases: Iterable[Case] = CASES) -> dict[str, dict[str, bool]]:
    """Decide every case with every engine.

    Returns:
        `{engine: {case id: decision}}` (`True`: allowed).
    """
    names = list(engines) if engines is not None else available_engines()
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engines {unknown}; choose from {list(ENGINES)}.")
    return {name: {case.id: ENGINES[name](case.robots, case.agent, case.url) for case in cases} for name in names}


def conformance_table(results: dict[str, dict[str, bool]], cases: Iterable[Case] = CASES) -> str:
    """Markdown: cases right per engine and topic, then every case where an engine is wrong."""
    cases = list(cases)
    names = list(results)
    topics = list(dict.fromkeys(c.topic for c in cases))
    lines = ["| topic | cases | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for topic in [*topics, "all"]:
        chosen = [c for c in cases if topic in ("all", c.topic)]
        right = [sum(results[n][c.id] == c.expected for c in chosen) for n in names]
        label = "**all**" if topic == "all" else topic
        lines.append(f"| {label} | {len(chosen)} | " + " | ".join(str(r) for r in right) + " |")
    wrong = [c for c in cases if any(results[n][c.id] != c.expected for n in names)]
    if wrong:
        lines += ["", "| case | expected | basis | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        for c in wrong:
            cells = [
                ("allow" if results[n][c.id] else "disallow") + ("" if results[n][c.id] == c.expected else " ✗")
                for n in names
            ]
            expected = "allow" if c.expected else "disallow"
            lines.append(f"| {c.id} | {expected} | {c.basis} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m hf_ext.compliance.conformance`: print the table recorded in docs/compliance.md. It takes no
    arguments (`--help` explains; anything else is a usage error, exit 2, rather than silently ignored)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m hf_ext.compliance.conformance",
        description="Run the RFC 9309 conformance cases (CASES) through every robots.txt engine and print the "
        "markdown table recorded in docs/compliance.md. Takes no arguments.",
    )
    parser.parse_args(argv)
    print(conformance_table(run_conformance()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
