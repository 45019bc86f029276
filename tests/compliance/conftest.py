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


@pytest.fixture
def local_server():
    """`serve(handle) -> port`: an HTTP/1.1 server on 127.0.0.1 (a free port) whose GET handler is
    `handle(request_handler)`; `(path, headers)` of each request it saw are kept in `serve.seen`. Stopped after the test."""
    import http.server
    import threading

    servers, seen = [], []

    def serve(handle):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                seen.append((self.path, dict(self.headers)))
                handle(self)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_address[1]

    serve.seen = seen
    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
