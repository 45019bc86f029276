"""Regression tests for the defects of compliance audit 7 (each test fails on the code before its fix)."""

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore
from hf_ext.compliance.rfc9309 import MAX_ROBOTS_BYTES, RobotsTxt

# 1. robots.txt size and line limits apply to the bytes the server sent, on every path through the store -------------

_LATIN1_COMMENT = (
    b"# R\xe8gles d'acc\xe8s \xe9t\xe9 \xe9crites pour les robots d'indexation \xe9\xe9\xe9\xe9\xe9\xe9\n"
)


def _latin1_robots(size: int, tail: bytes = b"User-agent: GPTBot\nDisallow: /\n") -> bytes:
    """`size` bytes of Latin-1 comments (each accent one invalid UTF-8 byte), then `tail`."""
    return _LATIN1_COMMENT * (size // len(_LATIN1_COMMENT)) + tail


def _via_every_store_path(body: bytes, tmp_path) -> dict:
    """The checker of `body` built through from_dict, a snapshot folder (hand-made and saved) and JSONL / Parquet."""
    folder = tmp_path / "hand"
    folder.mkdir()
    (folder / "fr.example.txt").write_bytes(body)
    store = RobotsTxtStore.from_dict({"fr.example": body})
    out = {"from_dict": store, "hand-made folder": RobotsTxtStore.load(folder)}
    for name in ("saved", "saved.jsonl", "saved.parquet"):
        out[name] = RobotsTxtStore.load(store.save(tmp_path / name))
    return {name: RobotsCompliance(s, user_agents=["GPTBot"]) for name, s in out.items()}


def test_a_latin1_robots_txt_under_500_kib_keeps_its_last_group_through_the_store(tmp_path):
    body = _latin1_robots(400 * 1024)
    assert len(body) < MAX_ROBOTS_BYTES
    url = "https://fr.example/page"
    assert not RobotsTxt.parse(body).allowed(url, "GPTBot")
    for name, checker in _via_every_store_path(body, tmp_path).items():
        assert checker.disallowed_agents(url) == ("GPTBot",), name


def test_content_after_500_kib_of_sent_bytes_is_ignored_through_the_store_as_by_the_parser(tmp_path):
    body = _latin1_robots(MAX_ROBOTS_BYTES + 100)  # the GPTBot group starts after the limit
    url = "https://fr.example/page"
    assert RobotsTxt.parse(body).allowed(url, "GPTBot")
    for name, checker in _via_every_store_path(body, tmp_path).items():
        assert checker.disallowed_agents(url) == (), name


def test_the_line_limit_is_measured_on_the_sent_bytes_of_a_latin1_line(tmp_path):
    # 6,016 bytes as sent (under the reference parser's 16,665), 18,016 if each invalid byte were written as U+FFFD;
    # the rule matches each byte as its own escape (%E9), as Google's parser reads the bytes
    body = b"User-agent: GPTBot\nDisallow: /" + b"\xe9" * 6000 + b"/end$\n"
    path = "/" + "%E9" * 6000 + "/end"
    assert not RobotsTxt.parse(body).allowed(f"https://fr.example{path}", "GPTBot")
    assert RobotsTxt.parse(body).allowed(f"https://fr.example{path}/more", "GPTBot")  # `$` was not cut off
    for name, checker in _via_every_store_path(body, tmp_path).items():
        assert checker.disallowed_agents(f"https://fr.example{path}") == ("GPTBot",), name
        assert checker.disallowed_agents(f"https://fr.example{path}/more") == (), name


def test_two_byte_order_marks_are_read_alike_by_the_parser_and_the_store(tmp_path):
    """Google's parser skips one byte order mark: a second one spoils the first line (here the user-agent line)."""
    body = b"\xef\xbb\xbf\xef\xbb\xbfUser-agent: GPTBot\nDisallow: /\n"
    url = "https://fr.example/page"
    assert RobotsTxt.parse(body).allowed(url, "GPTBot")
    assert RobotsTxt.parse(body.decode("utf-8")).allowed(url, "GPTBot")
    checkers = _via_every_store_path(body, tmp_path)
    checkers["from_dict(str)"] = RobotsCompliance({"fr.example": body.decode("utf-8")}, user_agents=["GPTBot"])
    for name, checker in checkers.items():
        assert checker.disallowed_agents(url) == (), name
    # one byte order mark (or part of one) is still skipped, and not kept in the stored text
    for bom in (b"\xef\xbb\xbf", b"\xef\xbb", b"\xef"):
        store = RobotsTxtStore.from_dict({"fr.example": bom + body[6:]})
        assert store["fr.example"].text.startswith("User-agent"), bom
        assert RobotsCompliance(store, user_agents=["GPTBot"]).disallowed_agents(url) == ("GPTBot",), bom


# 2. host keys as WHATWG URL reads them: UTS 46 case mapping (no final sigma), tabs and newlines removed -------------


def test_upper_case_greek_sigma_is_mapped_as_browsers_map_it():
    from hf_ext.compliance.robots import normalize_host

    # node: new URL("https://ΑΣ-Χ.gr/").host == "xn----ylb8cr.gr" (ασ-χ.gr); Python's "ΑΣ-Χ".lower() is "ας-χ"
    for spelling in ("https://ΑΣ-Χ.gr/page", "ΑΣ-Χ.GR", "ασ-χ.gr", "https://%CE%91%CE%A3-%CE%A7.gr/"):
        assert normalize_host(spelling) == "xn----ylb8cr.gr", spelling
    assert normalize_host("ας-χ.gr") == "xn----ylb5cva.gr"  # a final sigma written as such is another domain
    checker = RobotsCompliance(
        {"ασ-χ.gr": "User-agent: GPTBot\nDisallow: /\n", "ας-χ.gr": "User-agent: *\nAllow: /\n"},
        user_agents=["GPTBot"],
    )
    assert checker.disallowed_agents("https://ΑΣ-Χ.gr/page") == ("GPTBot",)
    assert RobotsTxtStore.from_dict({"ΑΣ-Χ.gr": None}).__contains__("ασ-χ.gr")


def test_tabs_and_newlines_in_a_url_are_removed_as_browsers_do():
    from hf_ext.compliance.robots import normalize_host

    assert normalize_host("https://a.c\tom/p") == "a.com"
    assert normalize_host("https://a.\nco\rm/p") == "a.com"
    checker = RobotsCompliance({"a.com": "User-agent: *\nDisallow: /pa\n"}, user_agents=["GPTBot"])
    for url in ("https://a.c\tom/pa", "https://a.com/p\ta", "ht\ntps://a.com/pa", "https://a.c\r\nom/pa"):
        assert checker.disallowed_agents(url) == ("GPTBot",), url
        assert checker.policy_for_url(url).host == "a.com", url
    urls = ["https://a.c\tom/pa", "https://a.com/p\nx", "https://a.c\tom/x"]
    assert checker.disallowed_agents_batch(urls) == [("GPTBot",), (), ()]


# 3. fetch_robots_txt: IPv6 URL in brackets, a non-HTTP answer and a body cut short are fetch errors -----------------


@pytest.fixture
def one_reply_server(monkeypatch):
    """`serve(reply)`: a server on 127.0.0.1 (free port) that answers each request with the raw bytes `reply` and
    closes; every request of fetch_robots_txt (`store._open_url`) is redirected to it and the URLs it was asked for
    are returned in a list."""
    import socket
    import threading
    import urllib.request

    from hf_ext.compliance import store as store_module

    servers, asked = [], []
    real_open_url = store_module._open_url

    def serve(reply: bytes) -> list:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        # generous timeouts (here and the fetches' timeout_s=30): a served request returns at once, and on a loaded
        # CI machine the server thread may wait seconds for a core (the fetch would record it unreachable)
        sock.settimeout(60)
        servers.append(sock)

        def loop():
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(60)
                    conn.recv(65536)
                    conn.sendall(reply)

        threading.Thread(target=loop, daemon=True).start()
        port = sock.getsockname()[1]

        def redirected(request, deadline):
            asked.append(request.full_url)
            local = urllib.request.Request(f"http://127.0.0.1:{port}/robots.txt", headers=dict(request.header_items()))
            return real_open_url(local, deadline)

        monkeypatch.setattr(store_module, "_open_url", redirected)
        return asked

    yield serve
    for sock in servers:
        sock.close()


_ROBOTS = b"User-agent: *\nDisallow: /secret\n"
_OK = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(_ROBOTS) + _ROBOTS


def test_fetch_robots_txt_writes_an_ipv6_host_in_brackets(one_reply_server):
    from hf_ext.compliance import fetch_robots_txt

    asked = one_reply_server(_OK)
    store = fetch_robots_txt(
        ["[::1]", "http://[2001:DB8::1]:8080/x"], "test/1.0", delay_s=0, timeout_s=30, scheme="http"
    )
    # (the port a host names is the port asked, since cd18)
    assert asked == ["http://[::1]/robots.txt", "http://[2001:db8::1]:8080/robots.txt"]
    for host in ("::1", "2001:db8::1"):
        assert store[host].status_class == "available" and store[host].text == _ROBOTS.decode(), host


def test_fetch_robots_txt_records_a_non_http_answer_as_unreachable_and_goes_on(one_reply_server):
    from hf_ext.compliance import fetch_robots_txt

    one_reply_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    store = fetch_robots_txt(["a.com", "b.com"], "test/1.0", delay_s=0, timeout_s=30, scheme="http")
    assert sorted(store) == ["a.com", "b.com"]
    for host in ("a.com", "b.com"):
        assert store[host].status_class == "unreachable" and "BadStatusLine" in store[host].error, store[host]
    assert RobotsCompliance(store, user_agents=["GPTBot"]).disallowed_agents("http://a.com/page") == ("GPTBot",)


def test_fetch_robots_txt_records_a_body_cut_short_as_a_failed_fetch(one_reply_server):
    from hf_ext.compliance import fetch_robots_txt

    one_reply_server(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\nUser-agent: *\n")
    store = fetch_robots_txt(["a.com"], "test/1.0", delay_s=0, timeout_s=30, scheme="http")
    record = store["a.com"]
    assert record.text is None and record.status_class == "unreachable" and "14 of 1000 bytes" in record.error
    # a refetch cut short keeps the complete copy already stored (RFC 9309 section 2.4)
    old = RobotsTxtStore.from_dict({"a.com": "User-agent: *\nDisallow: /old\n"})
    fetch_robots_txt(["a.com"], "test/1.0", delay_s=0, timeout_s=30, scheme="http", store=old)
    assert old["a.com"].text == "User-agent: *\nDisallow: /old\n"
    # a complete body, and one longer than the 500 KiB read (its Content-Length is more than what is read), are kept
    one_reply_server(_OK)
    assert fetch_robots_txt(["a.com"], "test/1.0", delay_s=0, timeout_s=30, scheme="http")["a.com"].status == 200
    big = b"User-agent: *\nDisallow: /x\n" + b"#" * MAX_ROBOTS_BYTES
    one_reply_server(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
    record = fetch_robots_txt(["a.com"], "test/1.0", delay_s=0, timeout_s=30, scheme="http")["a.com"]
    # (the comment line the limit cuts is not stored, since 2026-12-04)
    assert record.status == 200 and record.error is None and record.text == "User-agent: *\nDisallow: /x\n"


def _cut_at_limit(last_rule: bytes, kept: int) -> bytes:
    """A robots.txt longer than 500 KiB whose limit falls after `kept` bytes of its last line, `last_rule`."""
    head = b"User-agent: *\nDisallow: /drafts/\n"
    filler = b"#" + b"x" * (MAX_ROBOTS_BYTES - len(head) - kept - 2) + b"\n"  # one long comment line
    body = head + filler + last_rule + b"\nAllow: /\n"
    assert body[:MAX_ROBOTS_BYTES].endswith(last_rule[:kept]) and len(body) > MAX_ROBOTS_BYTES
    return body


@pytest.mark.parametrize("kept", [len("Disallow: /"), len("Disallow: /pr"), len("Disallow: /private/archive") - 1])
def test_a_line_the_500_kib_limit_cuts_is_not_read_as_a_rule(one_reply_server, tmp_path, kept):
    """RFC 9309 2.5 lets a parser stop at 500 KiB; the part of `Disallow: /private/archive` before the limit
    (`Disallow: /`, `Disallow: /pr`) was read as a rule, so the whole site (or /products, /press ...) was disallowed
    for every agent. The cut line is dropped by the parser, by `record_from_response` and by `fetch_robots_txt`."""
    from hf_ext.compliance import RobotsCompliance, fetch_robots_txt
    from hf_ext.compliance.store import record_from_response

    body = _cut_at_limit(b"Disallow: /private/archive", kept)
    for parsed in (body, body.decode()):
        robots = RobotsTxt.parse(parsed)
        assert robots.allowed("https://a.com/products", "GPTBot") and robots.allowed("https://a.com/blog", "GPTBot")
        assert not robots.allowed("https://a.com/drafts/x", "GPTBot")  # the lines before the cut still count
    assert RobotsCompliance({"a.com": body}).disallowed_agents("https://a.com/products") == ()
    record = record_from_response("a.com", 200, body, "2025-01-01")
    assert record.text.endswith("x\n") and "Disallow: /p" not in record.text
    one_reply_server(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    fetched = fetch_robots_txt(["a.com"], "test/1.0", delay_s=0, timeout_s=30, scheme="http")["a.com"]
    assert fetched.text == record.text
    saved = RobotsTxtStore.from_dict({"a.com": body}).save(tmp_path / "s.jsonl")  # stored whole, cut when parsed
    for robots in ({"a.com": fetched.text}, RobotsTxtStore.load(saved)):
        assert RobotsCompliance(robots).disallowed_agents("https://a.com/products") == ()


def test_a_whole_line_that_ends_at_the_500_kib_limit_is_kept(one_reply_server):
    """A line whose line break is the first byte past the limit is complete: it stays a rule, also when fetched (the
    fetcher reads one byte past the limit to tell)."""
    from hf_ext.compliance import fetch_robots_txt
    from hf_ext.compliance.store import record_from_response

    body = _cut_at_limit(b"Disallow: /private", len("Disallow: /private"))
    assert body[MAX_ROBOTS_BYTES : MAX_ROBOTS_BYTES + 1] == b"\n"
    for parsed in (body, body.decode()):
        assert not RobotsTxt.parse(parsed).allowed("https://a.com/private/x", "GPTBot")
    assert record_from_response("a.com", 200, body, "2025-01-01").text.endswith("Disallow: /private")
    one_reply_server(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    fetched = fetch_robots_txt(["a.com"], "test/1.0", delay_s=0, timeout_s=30, scheme="http")["a.com"]
    assert fetched.text.endswith("Disallow: /private")


# 4. a snapshot folder that lacks a host file its manifest lists, or has a bad `hosts` entry, is a ValueError ---------


def test_a_snapshot_folder_missing_a_listed_host_file_is_refused(tmp_path):
    import json

    folder = tmp_path / "snap"
    robots = {"a.com": "User-agent: *\nDisallow: /\n", "b.com": "User-agent: GPTBot\nDisallow: /\n"}
    RobotsTxtStore.from_dict(robots, fetched_at="2025-01-15").save(folder)
    assert sorted(RobotsTxtStore.load(folder)) == ["a.com", "b.com"]
    (folder / "b.com.txt").unlink()  # an interrupted copy to a cluster filesystem
    with pytest.raises(ValueError, match=r"lists the host file 'b\.com\.txt'.*missing"):
        RobotsTxtStore.load(folder)
    meta = json.loads((folder / "_snapshot.json").read_text())
    meta["hosts"]["a.com"] = "oops"
    meta["files"] = ["a.com.txt"]
    (folder / "_snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"hosts\['a\.com'\] must hold an object"):
        RobotsTxtStore.load(folder)


# 5. after a resumed LocalPipelineExecutor run, stats.json is re-merged from stats/ with the command the docs give -----


def test_the_documented_merge_stats_command_gives_all_tasks_totals_after_a_resumed_local_run(tmp_path, monkeypatch):
    import json
    import re
    import shlex
    import sys
    from pathlib import Path

    pytest.importorskip("datatrove")
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.tools import merge_stats

    from hf_ext.compliance import RobotsTxtFilter

    shards = tmp_path / "in"
    shards.mkdir()
    for k in range(2):  # task k drops 3 + k documents of a.com
        rows = [{"id": f"{k}-{i}", "text": "x", "url": f"https://a.com/{i}"} for i in range(3 + k)]
        rows.append({"id": f"{k}-b", "text": "x", "url": "https://b.com/"})
        (shards / f"part-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs = tmp_path / "logs" / "compliance"

    def run():
        step = RobotsTxtFilter({"a.com": "User-agent: *\nDisallow: /\n"}, user_agents=["GPTBot"])
        LocalPipelineExecutor([JsonlReader(str(shards)), step], tasks=2, workers=1, logging_dir=str(logs)).run()

    def dropped():
        stats = json.loads((logs / "stats.json").read_text())
        value = next(s for s in stats if "robots" in s["name"])["stats"]["dropped_robots_txt"]
        return value["total"] if isinstance(value, dict) else value

    run()
    assert dropped() == 7
    (logs / "completions" / "00001").unlink()  # task 1 was preempted: the rerun runs it alone
    run()
    assert dropped() == 4  # what datatrove's LocalPipelineExecutor writes: the resumed task only
    doc = (Path(__file__).parents[2] / "docs" / "compliance.md").read_text(encoding="utf-8")
    command = re.search(r"^merge_stats .*$", doc, re.MULTILINE)
    assert command is not None, "docs/compliance.md must say how to re-merge the stats after a resumed local run"
    argv = shlex.split(command.group().replace("logs/compliance", str(logs)))
    monkeypatch.setattr(sys, "argv", argv)
    merge_stats.main()
    assert dropped() == 7


# 6. compute_dcg flips the sign for a lower-is-better metric by itself; an explicit lower_is_better wins --------------


def test_compute_dcg_flips_the_sign_of_a_perplexity_metric_by_default():
    from hf_ext.compliance import compute_dcg
    from hf_ext.evaluation.uses import compliance_gap

    full = {"results": {"wikitext": {"word_perplexity,none": 20.0}, "lambada": {"word_perplexity,none": 10.0}}}
    comp = {"results": {"wikitext": {"word_perplexity,none": 22.0}, "lambada": {"word_perplexity,none": 11.0}}}
    for metric in ("word_perplexity", "word_perplexity,none"):
        report = compute_dcg(full, comp, metric=metric)  # the compliant model is worse: a positive gap
        assert [r["gap"] for r in report.rows] == [10.0, 10.0] and report.mean_gap == 10.0, metric
    assert compute_dcg(full, comp, metric="word_perplexity", relative=False).rows[1]["gap"] == 2.0
    # an explicit argument wins, `()` included; callers that already pass the tasks do not flip twice
    assert compute_dcg(full, comp, metric="word_perplexity", lower_is_better=()).mean_gap == -10.0
    assert [r["gap"] for r in compute_dcg(full, comp, metric="word_perplexity", lower_is_better=["lambada"]).rows] == [
        10.0,
        -10.0,
    ]
    assert compute_dcg(full, comp, metric="word_perplexity", lower_is_better=["lambada", "wikitext"]).mean_gap == 10.0
    assert compliance_gap(full, comp, tokenizer=None, metric="word_perplexity").mean_gap == 10.0
    acc_full = {"results": {"arc": {"acc,none": 0.5}}}
    acc_comp = {"results": {"arc": {"acc,none": 0.4}}}
    assert compute_dcg(acc_full, acc_comp, metric="acc").mean_gap == pytest.approx(20.0)


def test_datatrove_filter_refuses_an_empty_snapshot_folder_at_construction(tmp_path):
    """It used to construct and then fail in every task at its first document."""
    pytest.importorskip("datatrove")
    from hf_ext.compliance import RobotsTxtFilter

    with pytest.raises(ValueError, match="holds no <host>.txt files and no _snapshot.json"):
        RobotsTxtFilter(str(tmp_path))
    (tmp_path / "a.com.txt").write_text("User-agent: *\nDisallow: /\n")
    RobotsTxtFilter(str(tmp_path))


@pytest.mark.parametrize("encoding", ["gbk", "shift_jis"])
@pytest.mark.parametrize("past_limit", [False, True])
def test_multibyte_legacy_encodings_are_cut_at_the_same_byte_on_every_path(tmp_path, encoding, past_limit):
    """UTF-8 "replace" decoding writes one U+FFFD per invalid *sequence* (two GBK bytes can be one), so the store's
    text was read past 500 KiB of sent bytes; the decoder now writes one per invalid byte."""
    from hf_ext.compliance import RobotsCompliance, RobotsTxtStore
    from hf_ext.compliance.rfc9309 import MAX_ROBOTS_BYTES, RobotsTxt

    comment = "# 本网站禁止未经授权的爬虫抓取内容。\n" if encoding == "gbk" else "# このサイトのクローラーに関する規則です。\n"
    line = comment.encode(encoding)
    group = b"User-agent: GPTBot\nDisallow: /\n"
    n = (MAX_ROBOTS_BYTES + (200 if past_limit else -2000)) // len(line) + 1
    body = line * n + group
    assert (len(body) - len(group) > MAX_ROBOTS_BYTES) == past_limit
    url = "https://cn.example/page"
    expected = () if past_limit else ("GPTBot",)
    assert RobotsTxt.parse(body).allowed(url, "GPTBot") == past_limit
    (tmp_path / "cn.example.txt").write_bytes(body)
    for store in (RobotsTxtStore.from_dict({"cn.example": body}), RobotsTxtStore.load(str(tmp_path))):
        assert RobotsCompliance(store, user_agents=["GPTBot"]).disallowed_agents(url) == expected


def test_compute_dcg_flips_the_sign_of_the_perplexity_it_reads_without_a_metric_argument():
    from hf_ext.compliance import compute_dcg

    full = {"wikitext": {"alias": "wikitext", "word_perplexity,none": 20.0, "word_perplexity_stderr,none": "N/A"},
            "arc": {"alias": "arc", "acc,none": 0.5, "acc_stderr,none": 0.01}}  # fmt: skip
    comp = {"wikitext": {"alias": "wikitext", "word_perplexity,none": 25.0, "word_perplexity_stderr,none": "N/A"},
            "arc": {"alias": "arc", "acc,none": 0.4, "acc_stderr,none": 0.01}}  # fmt: skip
    for results in ((full, comp), ({"results": full}, {"results": comp})):
        report = compute_dcg(*results)
        gaps = {row["task"]: row["gap"] for row in report.rows}
        assert gaps["wikitext"] == pytest.approx(25.0) and gaps["arc"] == pytest.approx(20.0)
