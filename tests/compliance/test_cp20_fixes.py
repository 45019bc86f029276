"""Pass-20 audit (cp20) of robots.txt fetching: a 304 Not Modified keeps the stored robots.txt it confirms (it used to
replace it with an "unavailable" record, which allows everything), and a 304 with no stored copy is an error record
(unreachable), through `RobotsTxtStore.update_from_fetch` and through `fetch_robots_txt(store=...)`. A redirect to a
scheme other than http/https (`ftp://`, `file://`, `data:`) is not followed (the FTP one used to be, on a connection
`timeout_s` did not cover): the record keeps the redirect's status, unavailable, as for a redirect loop."""

import socket
import threading
import time

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore, fetch_robots_txt
from hf_ext.compliance.store import record_from_response

_GPTBOT_OUT = "User-agent: GPTBot\nDisallow: /\n"


def _not_modified(handler):
    handler.send_response(304)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _disallowed(store, url="https://news.example/article"):
    return RobotsCompliance(store, user_agents=["GPTBot"]).disallowed_agents(url)


# --------------------------------------------------------------------------------------------------------------------
# F1: 304 Not Modified


def test_a_304_keeps_the_stored_robots_txt_with_the_new_date():
    store = RobotsTxtStore()
    store.update_from_fetch(
        record_from_response("news.example", 200, _GPTBOT_OUT.encode(), "2025-01-01T00:00:00+00:00")
    )
    assert _disallowed(store) == ("GPTBot",)
    kept = store.update_from_fetch(record_from_response("news.example", 304, None, "2025-01-02T00:00:00+00:00"))
    assert kept is store["news.example"]
    assert (kept.text, kept.status, kept.error) == (_GPTBOT_OUT, 200, None)
    assert kept.status_class == "available"
    assert kept.fetched_at == "2025-01-02T00:00:00+00:00"  # the copy as seen at the 304's fetch
    assert _disallowed(store) == ("GPTBot",)


def test_an_older_or_undated_304_leaves_the_stored_record_as_it_is():
    store = RobotsTxtStore()
    store.add("news.example", _GPTBOT_OUT, fetched_at="2025-01-05", status=200)
    before = store["news.example"]
    assert store.update_from_fetch(record_from_response("news.example", 304, None, "2025-01-02")) is before
    assert store.update_from_fetch(record_from_response("news.example", 304, None, None)) is before
    assert store["news.example"] is before


@pytest.mark.parametrize(
    "previous",
    [
        None,
        ("404", None, 404, None),
        ("missing", None, None, None),
        ("503", None, 503, None),
        ("timeout", None, None, "TimeoutError: no answer"),
    ],
    ids=lambda p: "none" if p is None else p[0],
)
def test_a_304_without_a_stored_copy_is_recorded_unreachable_with_its_reason(previous):
    store = RobotsTxtStore()
    if previous is not None:
        _, text, status, error = previous
        store.add("news.example", text, fetched_at="2025-01-01", status=status, error=error)
    record = store.update_from_fetch(record_from_response("news.example", 304, None, "2025-01-02"))
    assert record is store["news.example"]
    assert record.text is None and record.status is None and record.fetched_at == "2025-01-02"
    assert record.error.startswith("NotModified:") and "304 Not Modified" in record.error
    assert record.status_class == "unreachable"  # not "unavailable": a 304 says a file exists
    assert _disallowed(store) == ("GPTBot",)  # RFC 9309 2.3.1.4: complete disallow


def test_fetch_robots_txt_answered_304_keeps_the_stored_copy(local_server):
    port = local_server(_not_modified)
    store = RobotsTxtStore()
    store.add("127.0.0.1", _GPTBOT_OUT, fetched_at="2025-01-01", status=200)
    fetch_robots_txt([f"127.0.0.1:{port}"], "test-cp20/1.0", delay_s=0, timeout_s=10, scheme="http", store=store)
    record = store["127.0.0.1"]
    assert (record.text, record.status, record.error) == (_GPTBOT_OUT, 200, None)
    assert record.fetched_at > "2025-01-01"  # dated by this fetch
    assert _disallowed(store, "http://127.0.0.1/a") == ("GPTBot",)
    # the request is not conditional: the fetcher keeps no validators
    assert len(local_server.seen) == 1
    assert not {h.lower() for h in local_server.seen[0][1]} & {"if-modified-since", "if-none-match"}


def test_fetch_robots_txt_answered_304_without_a_stored_copy_is_unreachable(local_server):
    port = local_server(_not_modified)
    store = fetch_robots_txt([f"127.0.0.1:{port}"], "test-cp20/1.0", delay_s=0, timeout_s=10, scheme="http")
    record = store["127.0.0.1"]
    assert record.text is None and record.status is None and record.error.startswith("NotModified:")
    assert record.status_class == "unreachable"
    assert _disallowed(store, "http://127.0.0.1/a") == ("GPTBot",)


# --------------------------------------------------------------------------------------------------------------------
# F2: redirects to schemes other than http and https


@pytest.fixture
def ftp_listener():
    """A TCP listener on 127.0.0.1 standing for an FTP server: it counts the connections it accepts and closes each at
    once (a fetch that follows an ftp:// redirect to it fails fast instead of waiting for a greeting)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    accepted = []

    def accept():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(conn.getpeername())
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield sock.getsockname()[1], accepted
    sock.close()


def _redirect_to(location, status=301):
    def handle(handler):
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return handle


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("scheme", ["ftp", "FTP"])
def test_a_redirect_to_ftp_is_not_followed(local_server, ftp_listener, scheme, status):
    ftp_port, accepted = ftp_listener
    port = local_server(_redirect_to(f"{scheme}://127.0.0.1:{ftp_port}/robots.txt", status))
    start = time.monotonic()
    store = fetch_robots_txt([f"127.0.0.1:{port}"], "test-cp20/1.0", delay_s=0, timeout_s=2, scheme="http")
    assert time.monotonic() - start < 2
    record = store["127.0.0.1"]
    assert (record.text, record.status, record.error) == (None, status, None), record
    assert record.status_class == "unavailable"  # as a redirect loop: RFC 9309 2.3.1.2
    time.sleep(0.05)  # a connection the fetch made would be accepted by now
    assert accepted == []


@pytest.mark.parametrize("kind", ["file", "data"])
def test_a_redirect_to_a_file_or_data_url_is_not_followed(local_server, tmp_path, kind):
    target = tmp_path / "robots.txt"
    target.write_text("User-agent: *\nDisallow: /\n")
    location = target.as_uri() if kind == "file" else "data:text/plain,User-agent:%20*%0ADisallow:%20/%0A"
    port = local_server(_redirect_to(location, 302))
    store = fetch_robots_txt([f"127.0.0.1:{port}"], "test-cp20/1.0", delay_s=0, timeout_s=2, scheme="http")
    record = store["127.0.0.1"]
    assert (record.text, record.status, record.error) == (None, 302, None), record
    assert record.status_class == "unavailable"


def test_a_redirect_between_http_servers_is_still_followed(local_server):
    def robots(handler):
        body = _GPTBOT_OUT.encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    target = local_server(robots)
    port = local_server(_redirect_to(f"http://127.0.0.1:{target}/robots.txt"))
    store = fetch_robots_txt([f"127.0.0.1:{port}"], "test-cp20/1.0", delay_s=0, timeout_s=2, scheme="http")
    record = store["127.0.0.1"]
    assert (record.text, record.status, record.status_class) == (_GPTBOT_OUT, 200, "available")


def test_a_redirect_loop_is_unavailable_with_the_redirect_status(local_server):
    # the outcome a refused scheme shares: urllib's HTTPError with the redirect's status
    port = local_server(_redirect_to("/robots.txt", 302))
    store = fetch_robots_txt([f"127.0.0.1:{port}"], "test-cp20/1.0", delay_s=0, timeout_s=2, scheme="http")
    record = store["127.0.0.1"]
    assert (record.text, record.status, record.error, record.status_class) == (None, 302, None, "unavailable")
