"""Audit pass 38 (lo45): a robots.txt str that starts with the surrogate escapes of a partial UTF-8 byte order mark
is read like its bytes (as Google's parser reads them); snapshots written before keep their decisions; status_class
names the fix for a status that is no int."""

import json

import numpy as np
import pytest
import torch

from hf_ext.compliance import status_class
from hf_ext.compliance.rfc9309 import RobotsTxt
from hf_ext.compliance.store import RobotsTxtStore

RULES = b"User-agent: *\nDisallow: /"
BODIES = [
    b"\xef\xbb" + RULES,  # partial marks: skipped by Google's parser -> disallowed
    b"\xef" + RULES,
    b"\xef\xbb\xbf" + RULES,  # a whole mark: skipped
    b"\xef\xbb\xbf\xef\xbb" + RULES,  # a mark, then a partial one: content, spoils the first line -> allowed
    b"\xef\xbb\xbf\xef\xbb\xbf" + RULES,
]
# Google's parser (fast-robotstxt, the conformance engine "google") on the bytes above
GOOGLE = [False, False, False, True, True]


def test_str_and_bytes_give_the_same_decision(tmp_path):
    for i, (body, google) in enumerate(zip(BODIES, GOOGLE)):
        text = body.decode("utf-8", "surrogateescape")
        assert RobotsTxt.parse(body).allowed("https://a.com/x", "GPTBot") is google
        # the str used to keep the escapes of a partial mark: "\udcef\udcbbUser-agent: *" allowed what the bytes
        # disallow
        assert RobotsTxt.parse(text).allowed("https://a.com/x", "GPTBot") is google, body
        for given in (body, text):
            store = RobotsTxtStore()
            store.add("a.com", given, "2024-01-01")
            for name, fmt in (("s.jsonl", None), ("s.parquet", None), ("folder", "folder")):
                path = tmp_path / f"{i}-{type(given).__name__}-{name}"
                store.save(str(path), format=fmt) if fmt else store.save(str(path))
                loaded = RobotsTxtStore.load(str(path))
                assert loaded.get("a.com").text == store.get("a.com").text
                assert RobotsTxt.parse(loaded.get("a.com").text).allowed("https://a.com/x", "GPTBot") is google


def test_a_snapshot_written_before_keeps_its_decision(tmp_path):
    # the text a store of the old code kept (and wrote) for b"\xef\xbb\xbf\xef\xbb" + RULES: the escapes are content
    path = tmp_path / "old.jsonl"
    old_text = "\udcef\udcbb" + RULES.decode()
    path.write_text(json.dumps({"host": "a.com", "robots_txt": old_text, "fetched_at": "2024-01-01"}) + "\n")
    loaded = RobotsTxtStore.load(str(path))
    assert RobotsTxt.parse(loaded.get("a.com").text).allowed("https://a.com/x", "GPTBot") is True
    # while the same str given to the parser or to `add` is the text of b"\xef\xbb" + RULES
    assert RobotsTxt.parse(old_text).allowed("https://a.com/x", "GPTBot") is False
    store = RobotsTxtStore()
    store.add("a.com", old_text, "2024-01-01")
    assert RobotsTxt.parse(store.get("a.com").text).allowed("https://a.com/x", "GPTBot") is False


@pytest.mark.parametrize("status", [torch.tensor(404), np.array(404), "404"])
def test_status_class_names_the_fix(status):
    with pytest.raises(TypeError, match=r"must be an int HTTP status or None, got .*; pass e\.g\. int\(status\)"):
        status_class("x", status)
