"""Pass-17 audit (cd17) of the data compliance layer: `compute_dcg` reads the direction of a perplexity from either
side's metric key, the recipe records the snapshot's fetch dates as a range, `annotate_compliance` does not leave a
stale agents column (and `compute_retention_stats` refuses one that contradicts the boolean), and the coarse
(domain-level) mode of the paper."""

import pytest


@pytest.mark.parametrize(
    "full, comp",
    [
        (
            {"results": {"wikitext": {"word_perplexity,none": 20.0}}},
            {"results": {"wikitext": {"word_perplexity,none": 25.0}}},
        ),
        ({"results": {"wikitext": {"word_perplexity,none": 20.0}}}, {"wikitext": 25.0}),
        ({"wikitext": 20.0}, {"results": {"wikitext": {"word_perplexity,none": 25.0}}}),
        ({"wikitext": {"perplexity": 20.0}}, {"wikitext": 25.0}),
        ({"wikitext": 20.0}, {"wikitext": {"perplexity": 25.0}}),
    ],
    ids=["both-lm-eval", "compliant-bare", "full-bare", "nested-full", "nested-compliant"],
)
def test_compute_dcg_perplexity_sign_does_not_depend_on_which_side_is_bare(full, comp):
    """Perplexity 20 -> 25: the compliant model is worse, so the gap is +25% whichever side names the metric (the
    full model as a bare score used to give -25%: only the non-compliant side was read)."""
    from hf_ext.compliance import compute_dcg

    assert compute_dcg(full, comp).rows[0]["gap"] == pytest.approx(25.0)
    assert compute_dcg(full, comp, relative=False).rows[0]["gap"] == pytest.approx(5.0)


def test_compute_dcg_bare_scores_on_both_sides_stay_higher_is_better_unless_named():
    from hf_ext.compliance import compute_dcg

    assert compute_dcg({"t": 20.0}, {"t": 25.0}).rows[0]["gap"] == pytest.approx(-25.0)
    assert compute_dcg({"t": 20.0}, {"t": 25.0}, lower_is_better=["t"]).rows[0]["gap"] == pytest.approx(25.0)
    # an explicit lower_is_better=() is used as is, also against a named perplexity on one side
    full = {"wikitext": 20.0}
    comp = {"results": {"wikitext": {"word_perplexity,none": 25.0}}}
    assert compute_dcg(full, comp, lower_is_better=()).rows[0]["gap"] == pytest.approx(-25.0)


def test_recipe_records_the_snapshot_fetch_dates_as_a_short_range(tmp_path, capsys):
    """3,000 hosts stamped a second apart (what fetch_robots_txt records) gave an 81,000-character first line of stdout
    and retention_stats.md and a 3,000-entry JSON list; the range is compared as instants (mixed offsets: the text
    order is not the time order)."""
    import json
    from datetime import UTC, datetime, timedelta

    from hf_ext.compliance import RobotsTxtStore
    from hf_ext.compliance.store import record_from_response
    from hf_ext.recipes.compliance import main

    store = RobotsTxtStore()
    t0 = datetime(2025, 1, 10, tzinfo=UTC)
    n = 3000
    for i in range(n):
        when = (t0 + timedelta(seconds=i)).isoformat(timespec="seconds")
        store.update_from_fetch(record_from_response(f"host{i}.com", 200, b"User-agent: GPTBot\nDisallow: /\n", when))
    # earliest instant written with +02:00 (sorts after the others as text), latest with -01:00 (sorts first)
    store.update_from_fetch(record_from_response("early.com", 200, b"", "2025-01-10T01:59:59+02:00"))
    store.update_from_fetch(record_from_response("late.com", 200, b"", "2025-01-09T23:59:59-01:00"))
    for i in range(3):
        store.add(f"nodate{i}.com", "User-agent: *\nAllow: /\n")
    store.add("odd.com", "", fetched_at="last tuesday")
    store.save(tmp_path / "snap.jsonl")
    with open(tmp_path / "docs.jsonl", "w") as fh:
        for i in range(20):
            fh.write(json.dumps({"url": f"https://host{i}.com/p", "text": "some words here " * 3}) + "\n")
    capsys.readouterr()
    main(["--robots", str(tmp_path / "snap.jsonl"), "--train_file", str(tmp_path / "docs.jsonl"),
          "--output_dir", str(tmp_path / "out")])  # fmt: skip
    expected = (
        "fetched 2025-01-10T01:59:59+02:00 .. 2025-01-09T23:59:59-01:00 (3 hosts without a date, 1 host with a date "
        "that is not ISO 8601)"
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"robots.txt snapshot: {n + 6} hosts, {expected}"
    md_first = (tmp_path / "out" / "retention_stats.md").read_text().splitlines()
    line = next(x for x in md_first if "robots.txt snapshot" in x)
    assert line.endswith(expected) and len(line) < 250
    saved = json.loads((tmp_path / "out" / "retention_stats.json").read_text())["robots_snapshot"]
    assert saved["fetched_at"] == {
        "earliest": "2025-01-10T01:59:59+02:00",
        "latest": "2025-01-09T23:59:59-01:00",
        "hosts_without_date": 3,
        "hosts_with_unparsed_date": 1,
    }
    assert saved["hosts"] == n + 6


def _two_snapshots():
    import datasets

    from hf_ext.compliance import RobotsCompliance

    urls = [f"https://a.com/{i}" for i in range(4)] + [f"https://b.com/{i}" for i in range(6)]
    ds = datasets.Dataset.from_dict({"url": urls, "text": ["w w"] * 10})
    old = RobotsCompliance({"a.com": "User-agent: GPTBot\nDisallow: /\n"})  # a.com opts out of GPTBot
    new = RobotsCompliance({"a.com": "", "b.com": "User-agent: CCBot\nDisallow: /\n"})  # lifted; b.com blocks CCBot
    return ds, old, new


@pytest.mark.parametrize("iterable", [False, True])
def test_annotate_compliance_without_agents_column_drops_an_earlier_annotations_agents(iterable):
    """Re-deciding only the boolean left kept rows naming the old opt-out (`['GPTBot']`) and removed rows with `[]`,
    and compute_retention_stats read them: per_agent {} although 6 documents were removed for CCBot."""
    from hf_ext.compliance import annotate_compliance, compute_retention_stats

    ds, old, new = _two_snapshots()
    first = annotate_compliance(ds, old)
    if iterable:
        first = first.to_iterable_dataset(num_shards=2)
    again = annotate_compliance(first, new, agents_column=None)
    rows = list(again)
    assert all("disallowed_user_agents" not in row for row in rows)
    assert [row["robots_compliant"] for row in rows] == [True] * 4 + [False] * 6
    if not iterable:
        assert again.column_names == ["url", "text", "robots_compliant"]
        stats = compute_retention_stats(again)
        assert stats.overall["docs_removed"] == 6 and stats.per_agent == {}
    # another column name for the new decision: the earlier pair is dropped too (the default agents column would be
    # read beside the new boolean)
    other = annotate_compliance(annotate_compliance(ds, old), new, column="compliant_2025", agents_column=None)
    assert "disallowed_user_agents" not in other.column_names and "robots_compliant" in other.column_names
    # with an agents column, both are refreshed as before
    both = annotate_compliance(annotate_compliance(ds, old), new)
    assert compute_retention_stats(both).per_agent["CCBot"] == 6
    assert both[0]["disallowed_user_agents"] == []


def test_compute_retention_stats_refuses_an_agents_column_of_another_decision():
    import datasets

    from hf_ext.compliance import annotate_compliance, compute_retention_stats

    ds, old, new = _two_snapshots()
    first = annotate_compliance(ds, old)
    new_flags = annotate_compliance(ds, new)["robots_compliant"]
    stale = first.remove_columns("robots_compliant").add_column(
        "robots_compliant", new_flags
    )  # what the old code left
    with pytest.raises(
        ValueError, match=r"row 0 is kept \(robots_compliant=True\) but names \['GPTBot'\].*agents_column"
    ):
        compute_retention_stats(stale)
    # a removed row with [] (kept rows clean)
    removed_empty = stale.map(lambda r: {"disallowed_user_agents": []})
    with pytest.raises(ValueError, match=r"row 4 is removed \(robots_compliant=False\) but names no agent"):
        compute_retention_stats(removed_empty)
    assert compute_retention_stats(stale, agents_column=None).overall["docs_removed"] == 6
    # None entries (no record) are accepted
    unknown = stale.cast_column("disallowed_user_agents", datasets.List(datasets.Value("string"))).map(
        lambda r: {"disallowed_user_agents": None}
    )
    assert compute_retention_stats(unknown).per_agent == {}
