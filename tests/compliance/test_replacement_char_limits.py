"""A real U+FFFD in a robots.txt (the valid UTF-8 `EF BF BD` a server sent) is three bytes toward the line and the
500 KiB limits, as Google's parser counts them on the raw bytes. It counted one (a rule of 6,000 of them kept the `$`
the parser cuts off, and a group after 200,000 of them, 600 KB as sent, was read): only snapshots written before the
surrogate-escape decoding held U+FFFD for a byte that was not UTF-8, and nothing in a snapshot tells those apart
(audit rv15, finding 3)."""

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore
from hf_ext.compliance.rfc9309 import MAX_LINE_BYTES, MAX_ROBOTS_BYTES, RobotsTxt

FFFD = "\ufffd".encode()  # b"\xef\xbf\xbd"


def _decisions(body: bytes, url: str, tmp_path, backends=("rfc9309", "google")) -> dict:
    """hf_ext's decision for `url` (allowed?) from `body` through the parser (bytes and text), every store path and
    `backends`."""
    store = RobotsTxtStore.from_dict({"example.com": body})
    out = {
        "parse(bytes)": RobotsTxt.parse(body).allowed(url, "bot"),
        "parse(str)": RobotsTxt.parse(body.decode("utf-8", "surrogateescape")).allowed(url, "bot"),
    }
    stores = {"from_dict": store}
    for name in ("saved", "saved.jsonl", "saved.parquet"):
        stores[name] = RobotsTxtStore.load(store.save(tmp_path / name))
    for name, s in stores.items():
        for backend in backends:
            out[f"{name}/{backend}"] = RobotsCompliance(s, user_agents=["bot"], backend=backend).is_compliant(url)
    return out


@pytest.mark.parametrize("n", [5000, 5548, 5549, 5550, 5551, 5552, 5553, 5554, 5555, 5556, 6000])
def test_the_line_limit_counts_a_real_replacement_character_as_its_three_bytes(tmp_path, n, google_raw):
    """`Disallow: /` + n x U+FFFD + `$`: where the line passes the limit the parser cuts the `$` off, and the URL one
    character longer than the rule is disallowed."""
    body = b"User-agent: *\nDisallow: /" + FFFD * n + b"$\n"
    url = "https://example.com/" + "%EF%BF%BD" * n + "x"
    expected = google_raw(body, "bot", url)
    assert expected is (len(b"Disallow: /") + 3 * n + 1 <= MAX_LINE_BYTES)  # the case is near the limit, both ways
    for name, allowed in _decisions(body, url, tmp_path).items():
        assert allowed is expected, name


@pytest.mark.parametrize("past_limit", [False, True])
def test_the_500_kib_limit_counts_a_real_replacement_character_as_its_three_bytes(tmp_path, past_limit, google_raw):
    """Comment lines of U+FFFD, then a group that disallows everything: it lies after 500 KiB of sent bytes (ignored,
    the page allowed) or just before (read). Google's parser reads whatever it is given (the limit is its fetcher's):
    it is given the first 500 KiB of the bytes, as a fetcher applying the limit would. (The `google` backend hands a
    stored text to that parser whole, as the parser reads it: not checked here.)"""
    line = b"# " + FFFD * 99 + b"\n"  # 300 bytes, 100 characters
    group = b"User-agent: bot\nDisallow: /\n"
    n = (MAX_ROBOTS_BYTES - len(group) + (300 if past_limit else -300)) // len(line)
    body = line * n + group
    assert (len(body) > MAX_ROBOTS_BYTES) is past_limit
    url = "https://example.com/page"
    expected = google_raw(body[:MAX_ROBOTS_BYTES], "bot", url)
    assert expected is past_limit
    for name, allowed in _decisions(body, url, tmp_path, backends=("rfc9309",)).items():
        assert allowed is expected, name
