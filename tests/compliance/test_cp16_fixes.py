"""Pass-16 audit (cp16) of the robots.txt snapshot store: `fetch_robots_txt` checks every argument before its first
request (a blank host, a single string, non-finite delays), and `RobotsTxtStore(records)` refuses two records of one
host as `load` / `from_dict` do (the later one in the list used to win, whatever its date)."""

import urllib.request

import numpy as np
import pytest

from hf_ext.compliance import RobotsTxtStore, fetch_robots_txt
from hf_ext.compliance import store as store_module
from hf_ext.compliance.store import RobotsRecord


@pytest.fixture
def no_network(monkeypatch):
    """Every request the fetcher makes is recorded and refused: the checks must fire before the first one."""
    asked = []

    def refuse(request, *args, **kwargs):
        asked.append(request.full_url)
        raise AssertionError(f"fetch_robots_txt made a request before checking its arguments: {request.full_url}")

    monkeypatch.setattr(store_module, "_open_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return asked


@pytest.mark.parametrize("blank", ["", "   ", "mailto:x@a.com"])
def test_fetch_robots_txt_refuses_an_entry_without_a_host_before_any_request(no_network, blank):
    hosts = ["a.example", "b.example", blank]  # e.g. open(f).read().split("\n") with the file's final newline
    with pytest.raises(ValueError, match=r"hosts\[2\].*no host name"):
        fetch_robots_txt(hosts, user_agent="test/1.0", delay_s=0)
    assert no_network == []


@pytest.mark.parametrize("hosts", ["localhost", b"localhost"])
def test_fetch_robots_txt_refuses_a_single_string_as_hosts(no_network, hosts):
    with pytest.raises(TypeError, match="hosts must be an iterable of host names"):
        fetch_robots_txt(hosts, user_agent="test/1.0", delay_s=0)
    assert no_network == []


def test_fetch_robots_txt_refuses_a_non_str_host(no_network):
    with pytest.raises(TypeError, match=r"hosts\[1\] must be a str"):
        fetch_robots_txt(["a.example", 7], user_agent="test/1.0", delay_s=0)
    assert no_network == []


@pytest.mark.parametrize(
    "kwargs",
    [{"delay_s": float("nan")}, {"timeout_s": float("nan")}, {"delay_s": float("inf")}, {"timeout_s": float("inf")},
     {"delay_s": True}, {"timeout_s": "10"}],
)
def test_fetch_robots_txt_refuses_non_finite_or_non_numeric_delays(no_network, kwargs):
    (name,) = kwargs
    with pytest.raises(ValueError, match=name):
        fetch_robots_txt(["a.example", "b.example"], user_agent="test/1.0", **kwargs)
    assert no_network == []


def test_fetch_robots_txt_refuses_a_store_of_another_type(no_network):
    with pytest.raises(TypeError, match="store must be a RobotsTxtStore"):
        fetch_robots_txt(["a.example"], user_agent="test/1.0", delay_s=0, store={})


def test_fetch_robots_txt_still_fetches_valid_hosts(monkeypatch):
    import io

    class Reply(io.BytesIO):
        status = 200
        headers = {}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    asked = []

    def serve(request, deadline):
        asked.append(request.full_url)
        return Reply(b"User-agent: GPTBot\nDisallow: /\n")

    monkeypatch.setattr(store_module, "_open_url", serve)
    # numpy numbers are numbers (rv16b: np.int64 was refused by the first version of these checks)
    store = fetch_robots_txt(
        ("A.Example", "https://b.example/page"), user_agent="test/1.0", delay_s=np.int64(0), timeout_s=np.float32(2)
    )
    assert asked == ["https://a.example/robots.txt", "https://b.example/robots.txt"]
    assert sorted(store) == ["a.example", "b.example"]


def test_store_from_records_refuses_two_records_of_one_host():
    new = RobotsRecord("a.com", "User-agent: *\nDisallow: /\n", "2025-01-15", 200, None)
    old = RobotsRecord("A.COM", "User-agent: *\nAllow: /\n", "2023-06-01", 200, None)
    with pytest.raises(ValueError, match=r"recorded twice.*records\[0\].*records\[1\]"):
        RobotsTxtStore([new, old])
    store = RobotsTxtStore([new, RobotsRecord("b.com", None, "2023-06-01", 404, None)])
    assert sorted(store) == ["a.com", "b.com"] and store["a.com"].fetched_at == "2025-01-15"


@pytest.mark.parametrize("records", [RobotsRecord("a.com", None, None, 404, None), "a.com", [("a.com", None)]])
def test_store_from_records_refuses_what_is_not_a_list_of_records(records):
    with pytest.raises(TypeError, match="RobotsRecord"):
        RobotsTxtStore(records)
