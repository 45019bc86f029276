"""Pass-33 audit (cp35) regressions for the compliance package."""

import pytest

from hf_ext.compliance import RobotsCompliance
from hf_ext.compliance.rfc9309 import RobotsTxt


@pytest.mark.parametrize(
    "rule, path",
    [
        ("/path/file-with-a-%2A.html", "/path/file-with-a-*.html"),
        ("/path/foo-%24", "/path/foo-$"),
        ("/path/foo-%24", "/path/foo-%24"),
        ("/path/file-with-a-%2a.html", "/path/file-with-a-%2A.html"),
    ],
)
def test_percent_encoded_special_characters_match_them_literally(rule, path):
    # RFC 9309 section 2.2.3's table: `%2A` / `%24` in a rule match a literal `*` / `$` in the URL (F1)
    robots = f"User-agent: *\nDisallow: {rule}\n"
    url = "https://www.example.com" + path
    assert not RobotsTxt.parse(robots).allowed(url, "GPTBot")
    checker = RobotsCompliance({"www.example.com": robots}, user_agents=["GPTBot"])
    assert checker.disallowed_agents(url) == ("GPTBot",)
    assert checker.is_compliant_batch([url, url]) == [False, False]


def test_wildcards_and_literal_dollars_keep_their_meaning():
    robots = "User-agent: *\nDisallow: /a$b\nDisallow: /s*t$\nAllow: /s*t/x\n"
    parsed = RobotsTxt.parse(robots)
    assert not parsed.allowed("http://e.com/a$b/c", "FooBot")  # `$` inside a rule is a literal `$`
    assert not parsed.allowed("http://e.com/a%24b", "FooBot")
    assert parsed.allowed("http://e.com/ab", "FooBot")
    assert not parsed.allowed("http://e.com/s*t", "FooBot")  # `*` in the URL is matched by a wildcard
    assert not parsed.allowed("http://e.com/sXt", "FooBot")
    assert parsed.allowed("http://e.com/sXt$", "FooBot")  # a URL's `$` does not end the path
    assert parsed.allowed("http://e.com/s*t/x", "FooBot")


def test_dcg_reads_numpy_scores():
    # a NumPy float32 / int64 score (e.g. np.mean over float32 predictions) was refused as "must be a finite number,
    # got np.float32(0.5)" (F2); NumPy's bool is no score
    import numpy as np

    from hf_ext.compliance import compute_dcg

    report = compute_dcg({"a": np.float32(0.5), "b": np.int64(2)}, {"a": 0.25, "b": np.float64(1.0)})
    assert [r["gap"] for r in report.rows] == [50.0, 50.0]
    assert all(type(r["non_compliant"]) is float for r in report.rows)
    with pytest.raises(ValueError, match="finite number"):
        compute_dcg({"a": np.float32("nan")}, {"a": 0.5})
    with pytest.raises(ValueError, match="finite number"):
        compute_dcg({"a": np.bool_(True)}, {"a": 0.5})
