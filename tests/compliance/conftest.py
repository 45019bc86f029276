"""Fixtures shared by the compliance tests."""

import pytest


@pytest.fixture
def google_raw():
    """`google_raw(body, agent, url) -> bool`: Google's robots.txt parser (PyPI `fast-robotstxt`) deciding on the raw
    bytes of `body`, through the package's C entry point (its Python method takes a str); skips without the package."""
    robots = pytest.importorskip("robotstxt.robots")

    def decide(body: bytes, agent: str, url: str) -> bool:
        matcher = robots._lib.robots_matcher_create()
        try:
            a, u = agent.encode(), url.encode()
            return bool(robots._lib.robots_allowed_by_robots(matcher, body, len(body), a, len(a), u, len(u)))
        finally:
            robots._lib.robots_matcher_free(matcher)

    return decide
