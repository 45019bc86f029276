"""Regression tests for the defects of compliance audit 7 (each test fails on the code before its fix)."""

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
    # 6,016 bytes as sent (under the reference parser's 16,665), 18,016 once each invalid byte is written as U+FFFD
    body = b"User-agent: GPTBot\nDisallow: /" + b"\xe9" * 6000 + b"/end$\n"
    path = "/" + "%EF%BF%BD" * 6000 + "/end"
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
