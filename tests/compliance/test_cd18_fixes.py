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


class _FakeSuffixList:
    """Stands for tldextract's extractor over the public suffix list: `suffix` of a host."""

    SUFFIXES = {"uk", "gov.uk", "co.uk", "de", "at", "com"}

    def __call__(self, host):
        labels = host.split(".")
        for i in range(len(labels)):
            if ".".join(labels[i:]) in self.SUFFIXES:
                return type("Parts", (), {"suffix": ".".join(labels[i:])})()
        return type("Parts", (), {"suffix": ""})()


def test_snapshot_host_that_is_a_suffix_is_not_listed_by_the_public_suffix_list(monkeypatch):
    from hf_ext.compliance import domains

    monkeypatch.setattr(domains, "_PSL", _FakeSuffixList(), raising=False)
    checker = RobotsCompliance(
        {"gov.uk": "User-agent: *\nDisallow: /\n", "co.uk": None, "web.de": "User-agent: *\nDisallow: /\n"}
    )
    checker.store.add("co.uk", None, status=503)  # unreachable: disallow everything under RFC 9309
    listed = build_blocked_domains(checker)
    assert listed == frozenset({"web.de"})
    assert build_blocked_domains(checker, registrable_domain=lambda h: "") == listed
    assert not is_blocked_domain("https://manchester.gov.uk/", listed)


def test_without_a_suffix_list_a_snapshot_host_that_closes_its_site_is_always_listed(builtin_suffix_rule):
    # the built-in rule takes web.de, nic.at and localhost for suffixes: it must not let their pages through
    closed = "User-agent: *\nDisallow: /\n"
    checker = RobotsCompliance({"web.de": closed, "nic.at": closed, "localhost": closed, "www.web.de": closed})
    listed = build_blocked_domains(checker)
    assert {"web.de", "nic.at", "localhost", "www.web.de"} <= set(listed)
    for url in ["https://web.de/mail", "https://nic.at/", "http://localhost/x"]:
        assert is_blocked_domain(url, listed), url
        assert not checker.is_compliant(url), url  # the fine mode agrees
    # a derived name stays under the rule: a closed www.gov.uk does not list gov.uk
    assert "gov.uk" not in build_blocked_domains(RobotsCompliance({"www.gov.uk": closed}))


def test_registrable_domain_that_returns_a_suffix_lists_the_host(builtin_suffix_rule):
    checker = RobotsCompliance(
        {"x.co.uk": "User-agent: *\nDisallow: /\n", "news.y.com": "User-agent: *\nDisallow: /\n"}
    )
    naive = lambda h: h.split(".", 1)[1]  # noqa: E731 - 'x.co.uk' -> 'co.uk': no registrable domain
    assert sorted(build_blocked_domains(checker, registrable_domain=naive)) == ["x.co.uk", "y.com"]
    # '' (no registrable domain): the snapshot host itself, listed (only a public suffix list leaves gov.uk off)
    checker = RobotsCompliance({"gov.uk": "User-agent: *\nDisallow: /\n"})
    assert build_blocked_domains(checker, registrable_domain=lambda h: "") == frozenset({"gov.uk"})


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
    assert [r is True for r in RobotsTxtFilter(checker, mode="coarse").filter_batch(docs)] == [
        r is True for r in coarse
    ]
    with pytest.raises(TypeError, match="url must be a str or None, got int"):
        RobotsTxtFilter(checker, mode="coarse").filter(Document(text="t", id="n", metadata={"url": 5}))


# --------------------------------------------------------------------------------------------------------------------
# F2, F3, F4: fetch_robots_txt against local servers on 127.0.0.1


def _reply(handler, body: bytes, headers=()):
    handler.send_response(200)
    for key, value in headers:
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


_DISALLOW_ALL = b"User-agent: *\nDisallow: /\n"


def _fetch(port, **kwargs):
    from hf_ext.compliance import fetch_robots_txt

    kwargs = {"delay_s": 0, "timeout_s": 20, "scheme": "http", **kwargs}
    return fetch_robots_txt([f"127.0.0.1:{port}"], "test-cd18/1.0", **kwargs)["127.0.0.1"]


def _zlib(data: bytes, wbits: int) -> bytes:
    import zlib

    c = zlib.compressobj(wbits=wbits)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    "coding, encode",
    [
        ("gzip", lambda b: __import__("gzip").compress(b)),
        ("x-gzip", lambda b: __import__("gzip").compress(b)),
        ("GZIP", lambda b: __import__("gzip").compress(b[:10]) + __import__("gzip").compress(b[10:])),  # 2 members
        ("deflate", lambda b: _zlib(b, 15)),  # zlib format (RFC 9110)
        ("deflate", lambda b: _zlib(b, -15)),  # raw deflate, as some servers send it
        ("identity, gzip", lambda b: __import__("gzip").compress(b)),
    ],
)
def test_fetch_decodes_an_unrequested_content_coding(local_server, coding, encode):
    port = local_server(lambda h: _reply(h, encode(_DISALLOW_ALL), [("Content-Encoding", coding)]))
    record = _fetch(port)
    assert record.status == 200 and record.error is None and record.text == _DISALLOW_ALL.decode()
    assert not RobotsCompliance({"127.0.0.1": record.text}).is_compliant("http://127.0.0.1/page")
    assert local_server.seen[-1][1].get("Accept-Encoding") == "identity"


def test_fetch_keeps_a_partial_opt_out_of_a_gzip_body(local_server):
    import gzip

    body = gzip.compress(b"User-agent: *\nDisallow: /private/\n")
    port = local_server(lambda h: _reply(h, body, [("Content-Encoding", "gzip")]))
    checker = RobotsCompliance({"127.0.0.1": _fetch(port).text})
    assert not checker.is_compliant("http://127.0.0.1/private/a") and checker.is_compliant("http://127.0.0.1/pub")


def test_fetch_decodes_at_most_500_kib_of_a_gzip_bomb(local_server):
    import gzip

    from hf_ext.compliance.rfc9309 import MAX_ROBOTS_BYTES

    body = gzip.compress(b"User-agent: *\nDisallow: /x\n" + b"#" * (64 * 1024 * 1024))  # 64 MiB in ~64 KiB
    assert len(body) < MAX_ROBOTS_BYTES
    port = local_server(lambda h: _reply(h, body, [("Content-Encoding", "gzip")]))
    record = _fetch(port)
    assert record.status == 200 and record.text == "User-agent: *\nDisallow: /x\n"  # the cut comment line dropped


@pytest.mark.parametrize(
    "coding, body, why",
    [
        ("br", b"\x1b\x1a\x00\xf8\xa5", "Content-Encoding 'br'"),
        ("zstd", b"(\xb5/\xfd\x00", "Content-Encoding 'zstd'"),
        ("gzip", _DISALLOW_ALL, "not valid gzip"),  # said gzip, sent plain text
        ("gzip", __import__("gzip").compress(_DISALLOW_ALL, mtime=0)[:-12], "cut short"),
        (
            "gzip, gzip",
            __import__("gzip").compress(__import__("gzip").compress(_DISALLOW_ALL, mtime=0), mtime=0),
            "content codings",
        ),
    ],
    # fixed ids: a gzip header holds the compression time, and ids made from the bytes differed between pytest-xdist
    # workers collecting in different seconds ("Different tests were collected between gw1 and gw0")
    ids=["br", "zstd", "plain-text-as-gzip", "gzip-cut-short", "gzip-twice"],
)
def test_fetch_records_an_undecodable_body_as_unreachable(local_server, coding, body, why):
    from hf_ext.compliance import RobotsTxtStore, fetch_robots_txt

    port = local_server(lambda h: _reply(h, body, [("Content-Encoding", coding)]))
    record = _fetch(port)
    assert record.text is None and record.status_class == "unreachable" and why in record.error, record
    assert "UndecodableBody" in record.error
    # under RFC 9309, disallow everything (never the compressed bytes read as rules that allow everything)
    assert not RobotsCompliance(RobotsTxtStore([record])).is_compliant("http://127.0.0.1/page")
    # a copy already stored stays
    old = RobotsTxtStore.from_dict({"127.0.0.1": "User-agent: *\nDisallow: /old\n"})
    fetch_robots_txt([f"127.0.0.1:{port}"], "test-cd18/1.0", delay_s=0, timeout_s=20, scheme="http", store=old)
    assert old["127.0.0.1"].text == "User-agent: *\nDisallow: /old\n"


def test_fetch_asks_the_port_a_host_names(local_server):
    port = local_server(lambda h: _reply(h, b"User-agent: *\nDisallow: /on-the-port/\n"))
    for name in (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}/some/page", f"u@127.0.0.1:{port}"):
        from hf_ext.compliance import fetch_robots_txt

        store = fetch_robots_txt([name], "test-cd18/1.0", delay_s=0, timeout_s=20, scheme="http")
        assert sorted(store) == ["127.0.0.1"]  # stored under the host, as documents are looked up
        assert store["127.0.0.1"].text == "User-agent: *\nDisallow: /on-the-port/\n", name
        assert not RobotsCompliance(store).is_compliant(f"http://127.0.0.1:{port}/on-the-port/a")
    assert local_server.seen[-1][1]["Host"] == f"127.0.0.1:{port}"


@pytest.mark.parametrize(
    "name, port",
    [
        ("x.com", None),
        ("x.com:", None),
        ("x.com:8080", 8080),
        ("https://u:p@x.com:8443/a:b", 8443),
        ("[::1]:81", 81),
        ("[::1]", None),
        ("::1", None),
        ("2001:db8::1", None),
        ("http://[2001:db8::1]:8080/x", 8080),
        ("x.com/a:5", None),
        # a URL's own scheme's default port is the one `scheme` implies (rv18: https://h:443/ with scheme="http"
        # asked an HTTP question on the TLS port and recorded the host unreachable)
        ("https://x.com:443/a", None),
        ("HTTP://x.com:80", None),
        ("http:x.com:80/", None),
        ("http://[::1]:80/", None),
        ("http://x.com:443/", 443),
        ("https://x.com:80/", 80),
        ("x.com:443", 443),
    ],
)
def test_port_of_a_host_name(name, port):
    from hf_ext.compliance.store import _port

    assert _port(name, 0) == port


@pytest.mark.parametrize("bad", ["x.com:99999", "x.com:0", "http://x.com:8o80/", "[::1]:-1"])
def test_fetch_refuses_a_bad_port_by_name_before_any_request(bad, monkeypatch):
    from hf_ext.compliance import fetch_robots_txt
    from hf_ext.compliance import store as store_module

    monkeypatch.setattr(store_module, "_open_url", lambda *a: pytest.fail("a request before the checks"))
    with pytest.raises(ValueError, match=r"hosts\[1\] = .* is not a port number"):
        fetch_robots_txt(["a.com", bad], "test-cd18/1.0", delay_s=0)


def _trickle(handler, headers_first=True):
    import time

    body = _DISALLOW_ALL + b"#" * 30
    try:
        if headers_first:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.flush()
            data = body
        else:  # the status line and headers themselves trickle
            data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        for byte in data:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:  # the client gave up
        pass


@pytest.mark.parametrize("headers_first", [True, False], ids=["body", "headers"])
def test_timeout_s_bounds_the_whole_fetch_of_a_trickling_server(local_server, headers_first):
    import time

    port = local_server(lambda h: _trickle(h, headers_first))
    start = time.monotonic()
    record = _fetch(port, timeout_s=0.5)  # every byte comes well within 0.5 s: only a total limit stops it
    took = time.monotonic() - start
    assert took < 1.5, took  # the whole answer takes 3-6 s
    assert record.status_class == "unreachable" and record.error.startswith("TimeoutError"), record
    assert "timeout_s=0.5" in record.error


def test_a_quick_answer_is_not_cut_by_the_deadline(local_server):
    port = local_server(lambda h: _reply(h, _DISALLOW_ALL))
    for _ in range(3):
        record = _fetch(port, timeout_s=5)
        assert record.status == 200 and record.text == _DISALLOW_ALL.decode()


# --------------------------------------------------------------------------------------------------------------------
# F5: a folder load during a save gives one snapshot; saves from two processes take turns

_N_HOSTS = 40


def _tagged_store(tag: str, extra: bool = False):
    from hf_ext.compliance import RobotsTxtStore

    hosts = {f"h{i}.com": f"User-agent: *\nDisallow: /{tag}/\n" for i in range(_N_HOSTS)}
    if extra:  # another host set, some hosts without a file
        hosts.update({f"only-b{i}.com": None for i in range(3)})
    return RobotsTxtStore.from_dict(hosts, fetched_at="2025-01-01")


def _writer(path, name, iterations, errors):
    for k in range(iterations):
        try:
            _tagged_store(f"{name}{k}", extra=name == "B").save(path)
        except Exception as err:  # noqa: BLE001 - reported to the test
            errors.put(f"save {name}{k}: {type(err).__name__}: {err}")


def _tags(store):
    return {r.text.split("Disallow: /")[1].strip().strip("/") for r in store.values() if r.text}


def test_folder_load_during_saves_is_never_a_mix_and_saves_take_turns(tmp_path):
    import multiprocessing as mp

    from hf_ext.compliance import RobotsTxtStore

    path = tmp_path / "snap"
    _tagged_store("init").save(path)
    # fork: the writers start at once (a spawned one imports hf_ext again, seconds); spawn where there is no fork
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    errors = ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(str(path), name, 20, errors)) for name in ("A", "B")]
    for w in writers:
        w.start()
    loads = mixed = 0
    failures = []
    while any(w.is_alive() for w in writers) or loads < 5:
        try:
            store = RobotsTxtStore.load(path)
        except Exception as err:  # noqa: BLE001
            failures.append(f"{type(err).__name__}: {err}")
            continue
        loads += 1
        tags = _tags(store)
        mixed += len(tags) != 1
        # one writer's snapshot: its host set too
        assert len(store) == _N_HOSTS + (3 if next(iter(tags))[0] == "B" else 0), tags
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    save_errors = []
    while not errors.empty():
        save_errors.append(errors.get())
    assert save_errors == [] and failures == [] and mixed == 0, (save_errors[:3], failures[:3], mixed, loads)
    final = RobotsTxtStore.load(path)
    assert _tags(final) in ({"A19"}, {"B19"})
    assert not [f for f in path.iterdir() if f.name.endswith((".staged", ".tmp"))]


def test_a_save_finishing_between_the_two_manifest_checks_is_not_missed(tmp_path, monkeypatch):
    """The interleaving behind a rare mixed load under concurrent saves, made deterministic: after the load pinned
    the manifests (no staged one), a save commits and renames its host files while the load reads (a mix), and it
    renames its staged manifest onto `_snapshot.json` between the load's two checks. Checking `_snapshot.json`
    first saw it unchanged and then no staged manifest, as at the pin, and returned the mix."""
    import os
    import pathlib

    import hf_ext.compliance.store as store_mod
    from hf_ext.compliance import RobotsTxtStore

    path = tmp_path / "snap"
    _tagged_store("A").save(path)
    meta, staged_meta = path / store_mod._META_FILE, path / store_mod._STAGED_META_FILE

    def commit_b_and_rename_its_files():  # a save of B up to its commit point, then its host files renamed
        with monkeypatch.context() as m:
            m.setattr(store_mod, "_finish_staged_save", lambda folder: None)
            _tagged_store("B", extra=True).save(path)
        assert staged_meta.is_file()
        for name in store_mod._listed_files(staged_meta):
            os.replace(store_mod._staged(path, name), path / name)

    real_read_bytes, real_stat = pathlib.Path.read_bytes, os.stat
    state = {"reads": 0, "checking": False, "renamed": False}

    def read_bytes(self):
        data = real_read_bytes(self)
        state["reads"] += 1
        if state["reads"] == 1:  # the load has read A's manifest and one host file
            commit_b_and_rename_its_files()
        return data

    def stat(p, *args, **kwargs):
        result = real_stat(p, *args, **kwargs)
        if state["checking"] and not state["renamed"] and pathlib.Path(p).parent == path:
            state["renamed"] = True  # the save's last step, right after the check's first look
            os.replace(staged_meta, meta)
        return result

    once = RobotsTxtStore._load_folder_once

    def load_once(cls, folder):
        store = once(folder)
        state["checking"] = True
        return store

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(RobotsTxtStore, "_load_folder_once", classmethod(load_once))
    store = RobotsTxtStore.load(path)
    monkeypatch.undo()
    assert state["renamed"]
    assert _tags(store) == {"B"} and len(store) == _N_HOSTS + 3  # read again: B's snapshot, whole


def test_a_damaged_folder_still_fails_at_once(tmp_path):
    import time

    from hf_ext.compliance import RobotsTxtStore

    path = tmp_path / "snap"
    _tagged_store("x").save(path)
    (path / "h3.com.txt").unlink()
    start = time.monotonic()
    with pytest.raises(ValueError, match="is missing: the snapshot folder is incomplete"):
        RobotsTxtStore.load(path)
    assert time.monotonic() - start < 5  # no retry: no save changed the manifest


def _self_signed_cert(folder):
    """A throwaway certificate for 127.0.0.1 (cert and key PEM paths)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_timeout_s_bounds_the_whole_fetch_over_tls(tmp_path, monkeypatch):
    # under https the connection's socket is replaced by its TLS wrapper: the deadline must shut that one down
    import http.server
    import ssl
    import threading
    import time

    cert_path, key_path = _self_signed_cert(tmp_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            _trickle(self, headers_first=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    trusting = ssl.create_default_context(cafile=str(cert_path))
    monkeypatch.setattr(ssl, "_create_default_https_context", lambda *a, **k: trusting)
    try:
        record = _fetch(server.server_address[1], scheme="https", timeout_s=20)  # reaches the trickle over TLS
        assert record.status == 200 and record.text.startswith(_DISALLOW_ALL.decode()), record
        start = time.monotonic()
        record = _fetch(server.server_address[1], scheme="https", timeout_s=0.5)
        took = time.monotonic() - start
    finally:
        server.shutdown()
        server.server_close()
    assert took < 1.5, took  # the whole answer takes ~3 s
    assert record.status_class == "unreachable" and record.error.startswith("TimeoutError"), record


def test_a_save_removes_the_temporary_files_of_a_killed_save_and_keeps_the_users(tmp_path):
    """A save killed inside `atomic_open` (a staged host file or the staged manifest half-written) leaves its hidden
    `.<name>.<8 characters>.tmp`; later saves removed the staged files but never these, so they piled up."""
    import os
    import tempfile

    from hf_ext.compliance import RobotsTxtStore

    path = tmp_path / "snap"
    _tagged_store("A").save(path)
    left = []
    for name in (".h1.com.txt.staged", "_snapshot.json.staged"):  # what atomic_open names its temporary files
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        left.append(os.path.basename(tmp))
    users = [".mine.tmp", "notes.txt.staged.12345678.tmp", ".h1.com.txt.tmp", "._snapshot.json.tmp"]
    for name in users:
        (path / name).write_text("user data")
    _tagged_store("B", extra=True).save(path)
    names = {f.name for f in path.iterdir()}
    assert not names & set(left), sorted(names & set(left))
    assert set(users) <= names
    assert _tags(RobotsTxtStore.load(path)) == {"B"}
