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
    # short whatever the number of hosts (the line also names the snapshot's path, whose length varies)
    assert line.endswith(expected) and len(line.replace(str(tmp_path / "snap.jsonl"), "")) < 200
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


# 4. coarse (domain-level) mode -----------------------------------------------------------------------------------

_URLS = [
    "https://x.com/a",  # 0  x.com: Disallow / for GPTBot
    "https://x.com/b/c",  # 1
    "https://blog.x.com/post",  # 2  subdomain of a listed domain, no record of its own
    "https://User:pw@X.COM.:8443/a",  # 3  userinfo, case, trailing dot, port
    "https://part.com/",  # 4  part.com: only /private/ disallowed
    "https://part.com/private/doc",  # 5
    "https://part.com/public",  # 6
    "https://open.org/x",  # 7
    "https://down.net/a",  # 8  503: unreachable (RFC 9309: disallows everything)
    "https://pub.io/public/page",  # 9  pub.io: Disallow / but Allow /public/
    "https://pub.io/other",  # 10
    "https://sub.y.com/a",  # 11 sub.y.com: Disallow / for CCBot
    "https://deep.sub.y.com/a",  # 12
    "https://y.com/a",  # 13 the parent of a listed host is not listed (without registrable_domain)
    "https://notx.com/a",  # 14 ends in "x.com" but is not a subdomain of it
    None,  # 15
    "https://unknown.biz/",  # 16
    "http://www.x.com/a",  # 17
    "https://Bücher.DE/a",  # 18 listed as bücher.de (IDNA)
    "https://shop.xn--bcher-kva.de/x",  # 19
]
_FINE_KEPT = [2, 4, 6, 7, 9, 12, 13, 14, 15, 16, 19]
_COARSE_KEPT = [4, 5, 6, 7, 13, 14, 15, 16]


def _coarse_setup(**checker_kwargs):
    import datasets

    from hf_ext.compliance import RobotsCompliance, RobotsTxtStore

    store = RobotsTxtStore()
    store.add("x.com", "User-agent: GPTBot\nDisallow: /\n")
    store.add("part.com", "User-agent: CCBot\nDisallow: /private/\n")
    store.add("open.org", "User-agent: *\nAllow: /\n")
    store.add("down.net", None, status=503)
    store.add("pub.io", "User-agent: GPTBot\nDisallow: /\nAllow: /public/\n")
    store.add("sub.y.com", "User-agent: CCBot\nDisallow: /\n")
    store.add("bücher.de", "User-agent: *\nDisallow: /\n")
    ds = datasets.Dataset.from_dict({"id": list(range(20)), "url": _URLS})
    return ds, RobotsCompliance(store, **checker_kwargs)


def test_build_blocked_domains_lists_hosts_that_disallow_the_root():
    from hf_ext.compliance import BlockedDomains, build_blocked_domains

    _, checker = _coarse_setup()
    listed = build_blocked_domains(checker)
    assert isinstance(listed, BlockedDomains)
    assert sorted(listed) == ["down.net", "pub.io", "sub.y.com", "x.com", "xn--bcher-kva.de"]  # not part.com
    # "paper": only a readable robots.txt opts out
    assert "down.net" not in build_blocked_domains(_coarse_setup(status_policy="paper")[1])
    assert "x.com" not in build_blocked_domains(_coarse_setup(user_agents=["CCBot"])[1])  # only GPTBot is refused
    for backend in ("protego",):
        assert build_blocked_domains(_coarse_setup(backend=backend)[1]) == listed
    # subdomain aggregation (the paper's list) with a registrable-domain function
    two_labels = build_blocked_domains(checker, registrable_domain=lambda h: ".".join(h.split(".")[-2:]))
    assert "y.com" in two_labels and "sub.y.com" not in two_labels
    assert build_blocked_domains(checker, registrable_domain=lambda h: "") == listed  # none: the host itself
    with pytest.raises(TypeError, match=r"registrable_domain\('.*'\) returned int 3"):
        build_blocked_domains(checker, registrable_domain=lambda h: 3)
    with pytest.raises(TypeError, match="registrable_domain must be a function"):
        build_blocked_domains(checker, registrable_domain="tld")
    with pytest.raises(TypeError, match="checker must be a RobotsCompliance"):
        build_blocked_domains(checker.store)


def test_is_blocked_domain_matches_subdomains_and_normalises_hosts():
    from hf_ext.compliance import BlockedDomains, is_blocked_domain

    domains = BlockedDomains(["x.com", "Bücher.DE.", "10.0.0.1"])
    assert is_blocked_domain("https://blog.x.com/p", domains)
    assert not is_blocked_domain("https://blog.x.com/p", domains, match_subdomains=False)
    assert not is_blocked_domain("https://x.com/p", ["blog.x.com"])  # a listed subdomain does not block its parent
    assert is_blocked_domain("https://a:b@WWW.X.COM.:8080/p", domains)
    assert is_blocked_domain("https://shop.xn--bcher-kva.de/", domains)
    assert not is_blocked_domain("https://notx.com/", domains)
    assert is_blocked_domain("http://10.0.0.1/", domains) and not is_blocked_domain("http://1.10.0.0.1/", domains)
    assert not is_blocked_domain(None, domains) and not is_blocked_domain("", domains)
    assert is_blocked_domain("https://x.com/", {"X.com"})  # any collection, normalised per call
    with pytest.raises(TypeError, match="domains must be a collection of domain names"):
        is_blocked_domain("https://x.com/", "x.com")
    with pytest.raises(TypeError, match=r"domains\[1\] must be a domain name"):
        BlockedDomains(["x.com", 3])
    with pytest.raises(ValueError, match=r"domains\[0\]='' names no host"):
        BlockedDomains([""])
    with pytest.raises(TypeError, match="url must be a str or None"):
        is_blocked_domain(b"https://x.com/", domains)
    with pytest.raises(TypeError, match="match_subdomains must be True or False"):
        is_blocked_domain("https://x.com/", domains, match_subdomains="yes")
    import pickle

    assert pickle.loads(pickle.dumps(domains)) == domains


def test_filter_compliant_coarse_and_fine_modes_on_twenty_rows():
    from hf_ext.compliance import filter_compliant

    ds, checker = _coarse_setup()
    assert filter_compliant(ds, checker)["id"] == _FINE_KEPT
    assert filter_compliant(ds, checker, mode="fine")["id"] == _FINE_KEPT
    assert filter_compliant(ds, checker, mode="coarse")["id"] == _COARSE_KEPT
    assert filter_compliant(ds, checker, mode="coarse", num_proc=2, batch_size=3)["id"] == _COARSE_KEPT
    # the partial opt-out: part.com is kept whole by coarse, its /private/ URL dropped by fine
    assert 5 in _COARSE_KEPT and 5 not in _FINE_KEPT
    # blog.x.com vs x.com: coarse drops the subdomain of a listed domain, fine decides it by its own (absent) record
    assert 2 not in _COARSE_KEPT and 2 in _FINE_KEPT
    # a given list (e.g. a released one) replaces the snapshot's
    assert filter_compliant(ds, checker, mode="coarse", blocked_domains=["y.com"])["id"] == [
        i for i in range(20) if i not in (11, 12, 13)
    ]
    # a missing URL follows the checker's missing_url
    _, dropping = _coarse_setup(missing_url="drop")
    assert 15 not in filter_compliant(ds, dropping, mode="coarse")["id"]


def test_filter_compliant_refuses_bad_mode_arguments_by_name():
    from hf_ext.compliance import filter_compliant

    ds, checker = _coarse_setup()
    with pytest.raises(ValueError, match="mode must be 'fine'.*or 'coarse'.*got 'tag'"):
        filter_compliant(ds, checker, mode="tag")
    with pytest.raises(ValueError, match="blocked_domains is the coarse mode's list"):
        filter_compliant(ds, checker, blocked_domains=["x.com"])
    with pytest.raises(TypeError, match="domains must be a collection"):
        filter_compliant(ds, checker, mode="coarse", blocked_domains="x.com")


def test_datatrove_filter_coarse_mode_drops_the_same_documents(tmp_path):
    pytest.importorskip("datatrove")
    from datatrove.data import Document

    from hf_ext.compliance import RobotsTxtFilter

    ds, checker = _coarse_setup()

    def docs():
        return [Document(text="t", id=str(i), metadata={"url": u}) for i, u in enumerate(_URLS)]

    batch = RobotsTxtFilter(checker, mode="coarse", batch_size=4)
    assert [int(d.id) for d in batch.run(iter(docs()))] == _COARSE_KEPT
    assert batch.stats["dropped_robots_txt_domain"].total == 20 - len(_COARSE_KEPT)
    assert [int(d.id) for d in RobotsTxtFilter(checker, mode="coarse", batch_size=1).run(iter(docs()))] == _COARSE_KEPT
    assert [int(d.id) for d in RobotsTxtFilter(checker).run(iter(docs()))] == _FINE_KEPT
    # from a snapshot path (built by the task on first use), and with a given list
    checker.store.save(tmp_path / "snap.jsonl")
    by_path = RobotsTxtFilter(str(tmp_path / "snap.jsonl"), mode="coarse")
    assert [int(d.id) for d in by_path.run(iter(docs()))] == _COARSE_KEPT
    given = RobotsTxtFilter(checker, mode="coarse", blocked_domains=["y.com"])
    assert [int(d.id) for d in given.run(iter(docs()))] == [i for i in range(20) if i not in (11, 12, 13)]
    with pytest.raises(ValueError, match="mode must be 'fine'"):
        RobotsTxtFilter(checker, mode="tag")
    with pytest.raises(ValueError, match="blocked_domains is the coarse mode's list"):
        RobotsTxtFilter(checker, blocked_domains=["x.com"])


def test_coarse_mode_drops_what_the_www_fallback_of_fine_mode_drops():
    # rv17b: the snapshot holds only www.x.com's file (Disallow: / for GPTBot); fine mode decides x.com by it
    # (host_fallback="www"), so coarse mode must list x.com too, or it would keep documents fine mode drops
    import datasets

    from hf_ext.compliance import RobotsCompliance, RobotsTxtStore, build_blocked_domains, filter_compliant

    store = RobotsTxtStore()
    store.add("www.x.com", "User-agent: GPTBot\nDisallow: /\n")
    store.add("www.z.com", "User-agent: GPTBot\nDisallow: /\n")
    store.add("z.com", "User-agent: GPTBot\nAllow: /\n")  # z.com has its own file: decided by it
    urls = ["https://x.com/article", "https://www.x.com/a", "https://z.com/b", "https://www.z.com/c", "https://y.com/d"]
    ds = datasets.Dataset.from_dict({"url": urls})
    checker = RobotsCompliance(store, user_agents=["GPTBot"])
    assert sorted(build_blocked_domains(checker)) == ["www.x.com", "www.z.com", "x.com"]
    assert filter_compliant(ds, checker)["url"] == ["https://z.com/b", "https://y.com/d"]
    assert filter_compliant(ds, checker, mode="coarse")["url"] == ["https://z.com/b", "https://y.com/d"]
    exact = RobotsCompliance(store, user_agents=["GPTBot"], host_fallback="exact")
    assert sorted(build_blocked_domains(exact)) == ["www.x.com", "www.z.com"]
