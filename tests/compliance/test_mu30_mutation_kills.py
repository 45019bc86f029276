"""Tests from the mu30 mutation run over hf_ext/compliance (each fails with its mutant applied, passes on clean code)."""

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore
from hf_ext.compliance.robots import status_class

_CLOSED = "User-agent: *\nDisallow: /\n"


def test_status_class_edges_of_the_2xx_range():
    """RFC 9309 2.3.1: only a 2xx answer carries a robots.txt; a 3xx the fetcher left unresolved (300 Multiple
    Choices included, whatever body came with it) is "unavailable" (allow everything), a 5xx "unreachable".
    (mu30 R01)"""
    assert status_class(_CLOSED, 200) == status_class(_CLOSED, 299) == "available"
    assert status_class(_CLOSED, 300) == status_class(_CLOSED, 399) == status_class(_CLOSED, 499) == "unavailable"
    assert status_class(_CLOSED, 500) == "unreachable"
    store = RobotsTxtStore()
    store.add("multiple.example", _CLOSED, status=300)
    store.add("ok.example", _CLOSED, status=299)
    checker = RobotsCompliance(store, user_agents=["GPTBot"])
    assert checker.disallowed_agents("https://multiple.example/page") == ()
    assert checker.disallowed_agents("https://ok.example/page") == ("GPTBot",)
    assert store.status_counts()["unavailable"] == 1


def test_agents_of_two_rule_groups_are_reported_in_the_order_given():
    """Two rule groups disallow a URL, and their agents interleave in `user_agents`: the result is still in the order
    of `user_agents` (documented), not group by group. (mu30 R06)"""
    text = "User-agent: GPTBot\nUser-agent: CCBot\nDisallow: /\n\nUser-agent: ClaudeBot\nDisallow: /private\n"
    agents = ["GPTBot", "ClaudeBot", "CCBot"]
    for backend in ("rfc9309", "protego"):
        checker = RobotsCompliance({"site.example": text}, user_agents=agents, backend=backend)
        assert checker.disallowed_agents("https://site.example/private/a") == ("GPTBot", "ClaudeBot", "CCBot")
        assert checker.disallowed_agents_batch(["https://site.example/private/b"]) == [
            ("GPTBot", "ClaudeBot", "CCBot")
        ]
        assert checker.disallowed_agents("https://site.example/public") == ("GPTBot", "CCBot")


def test_compute_dcg_refuses_an_empty_task_list_and_a_non_bool_relative():
    """`tasks=[]` would compare nothing (a report without rows, mean gap NaN); `relative="no"` is truthy and gave percent
    gaps. Both refused, naming the argument. (mu30 D15, D19)"""
    import pytest

    from hf_ext.compliance import compute_dcg

    full, comp = {"a": 0.5, "b": 0.4}, {"a": 0.4, "b": 0.4}
    with pytest.raises(ValueError, match=r"tasks \[\] are missing"):
        compute_dcg(full, comp, tasks=[])
    for relative in ("no", 0, None):
        with pytest.raises(TypeError, match=r"relative must be True \(percent gaps\) or False"):
            compute_dcg(full, comp, relative=relative)
    assert compute_dcg(full, comp, relative=False, tasks=["a"]).mean_gap == pytest.approx(0.1)


def test_datatrove_filter_refuses_a_zero_batch_size():
    """`filter_batch` decides `batch_size` documents per call: 0 is refused by name when the step is built. (mu30 T09)"""
    import pytest

    from hf_ext.compliance.datatrove_filter import RobotsTxtFilter

    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        RobotsTxtFilter({"a.example": _CLOSED}, batch_size=0)
    assert RobotsTxtFilter({"a.example": _CLOSED}, batch_size=1).batch_size == 1


def test_datatrove_coarse_mode_clears_an_earlier_runs_domain_reason_on_kept_documents():
    """mu30 T06 (lead): re-filtering a coarse run's `removed/` output with a shorter blocked list kept the recovered
    documents' stale `filter_reason: 'robots_txt_domain'`; the fine mode's counterpart was tested, this one was not."""
    from datatrove.data import Document

    from hf_ext.compliance import RobotsTxtStore
    from hf_ext.compliance.datatrove_filter import RobotsTxtFilter

    store = RobotsTxtStore.from_dict({"news.example": "User-agent: *\nAllow: /\n"}, fetched_at="2025-07-01")
    docs = [
        Document(text="t", id="0", metadata={"url": "https://news.example/a", "filter_reason": "robots_txt_domain"}),
        Document(
            text="t", id="1", metadata={"url": "https://blocked.example/a", "filter_reason": "robots_txt_domain"}
        ),
        Document(text="t", id="2", metadata={"url": "https://news.example/b", "filter_reason": "gopher_rep"}),
    ]
    step = RobotsTxtFilter(store, mode="coarse", blocked_domains=["blocked.example"], batch_size=1)
    kept = {d.id: d.metadata for d in step.run(iter(docs))}
    assert kept == {
        "0": {"url": "https://news.example/a"},
        "2": {"url": "https://news.example/b", "filter_reason": "gopher_rep"},
    }
