"""Regressions found by the compliance audit: scheme detection, snapshot shapes, IPv6 keys, empty datasets, recorded
run settings, lm-eval groups in the DCG and Protego on scheme-less URLs."""

import dataclasses
import json

import datasets
import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore, annotate_compliance, compute_dcg, normalize_host
from hf_ext.compliance.rfc9309 import authority_end, authority_start, url_path
from hf_ext.compliance.robots import absolute_url

EMBEDDED = [
    "a.com/p?u=https://zzz.com/x",
    "//a.com/p?u=https://zzz.com/x",
    "a.com/go/https://zzz.com/x",
    "a.com#https://zzz.com/x",
]


@pytest.mark.parametrize("url", EMBEDDED)
def test_embedded_url_does_not_set_the_host(url):
    assert normalize_host(url) == "a.com"
    checker = RobotsCompliance({"a.com": "User-agent: *\nDisallow: /\n"})
    assert not checker.is_compliant(url)
    assert checker.is_compliant_batch([url, url]) == [False, False]
    assert checker.policy_for_url(url).host == "a.com"


def test_embedded_url_decision_does_not_depend_on_the_cache():
    url = "z.com/go/https://y.com/x"
    checker = RobotsCompliance({"y.com": "User-agent: *\nDisallow: /x\n"})
    assert checker.is_compliant_batch([url]) == checker.is_compliant_batch([url]) == [True]
    assert url_path(url) == "/go/https://y.com/x"
    assert url_path("z.com?u=https://y.com/x") == "/?u=https://y.com/x"
    # ordinary absolute URLs are unchanged
    assert normalize_host("HTTPS://User@Y.com:8080/x?u=https://z.com/") == "y.com"
    assert url_path("https://y.com/a?b=https://z.com/") == "/a?b=https://z.com/"


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
@pytest.mark.parametrize("url", ["https://a.com/p", "//a.com/p", "a.com/p", "a.com/p?u=https://b.com/q"])
def test_every_backend_reads_scheme_less_urls(backend, url):
    if backend == "google":
        pytest.importorskip("robotstxt")
    checker = RobotsCompliance({"a.com": "User-agent: *\nDisallow: /p\n"}, backend=backend)
    assert checker.disallowed_agents(url) == checker.disallowed_agents_batch([url])[0] != ()


def test_jsonl_record_without_robots_txt_field_is_an_error(tmp_path):
    path = tmp_path / "snap.jsonl"
    path.write_text(json.dumps({"host": "a.com", "content": "User-agent: *\nDisallow: /"}) + "\n")
    with pytest.raises(ValueError, match="robots_txt"):
        RobotsTxtStore.load(path)


def test_folder_without_snapshot_files_is_an_error(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "part-0.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="shards"):
        RobotsTxtStore.load(tmp_path / "shards")
    # a saved empty store is refused as the empty .jsonl/.parquet are (it would remove nothing), unless asked for
    RobotsTxtStore().save(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"holds no robots\.txt records \(0 hosts\)"):
        RobotsTxtStore.load(tmp_path / "empty")
    assert len(RobotsTxtStore.load(tmp_path / "empty", allow_empty=True)) == 0


def test_snapshot_metadata_keys_are_normalised(tmp_path):
    (tmp_path / "a.com.txt").write_text("User-agent: GPTBot\nDisallow: /x\n")
    (tmp_path / "_snapshot.json").write_text(json.dumps({"hosts": {"A.com": {"status": 503, "fetched_at": "d"}}}))
    record = RobotsTxtStore.load(tmp_path)["a.com"]
    assert (record.status, record.fetched_at) == (503, "d")


@pytest.mark.parametrize("name", ["snap", "snap.jsonl", "snap.parquet"])
def test_ipv6_hosts_round_trip(tmp_path, name):
    store = RobotsTxtStore.from_dict(
        {"[2001:DB8::1]": "User-agent: *\nDisallow: /\n", "[::1]:8080": None, "a.com": "User-agent: *\nDisallow: /\n"}
    )
    assert set(store) == {"2001:db8::1", "::1", "a.com"}
    loaded = RobotsTxtStore.load(store.save(tmp_path / name))
    assert set(loaded) == set(store)
    assert not RobotsCompliance(loaded).is_compliant("http://[2001:db8::1]:80/x")
    assert normalize_host("a.com:8080") == "a.com"


def test_annotate_empty_dataset_adds_typed_columns():
    from hf_ext.compliance import compute_retention_stats

    checker = RobotsCompliance({"a.com": "User-agent: *\nDisallow: /\n"})
    features = datasets.Features({"url": datasets.Value("string"), "text": datasets.Value("string")})
    empty = datasets.Dataset.from_dict({"url": [], "text": []}, features=features)
    for out in (annotate_compliance(empty, checker), annotate_compliance(datasets.DatasetDict(train=empty), checker)):
        split = out["train"] if isinstance(out, datasets.DatasetDict) else out
        assert split.features["robots_compliant"] == datasets.Value("bool")
        assert split.features["disallowed_user_agents"] == datasets.List(datasets.Value("string"))
        assert len(split) == 0
    stats = compute_retention_stats(annotate_compliance(empty, checker))
    assert stats.overall["docs"] == stats.overall["tokens"] == 0


def test_recipe_records_snapshot_date_agents_and_settings(tmp_path):
    from hf_ext.compliance import load_example_robots
    from hf_ext.recipes.compliance import main

    snap = RobotsTxtStore(dataclasses.replace(r, fetched_at="2024-12-31") for r in load_example_robots().values())
    snap.save(tmp_path / "snap.jsonl")
    argv = ["--robots", str(tmp_path / "snap.jsonl"), "--user_agents", "GPTBot,CCBot", "--backend", "protego"]
    main([*argv, "--status_policy", "paper", "--output_dir", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "retention_stats.json").read_text())
    assert saved["robots_snapshot"]["fetched_at"] == {
        "earliest": "2024-12-31", "latest": "2024-12-31", "hosts_without_date": 0, "hosts_with_unparsed_date": 0,
    }  # fmt: skip
    assert saved["robots_snapshot"]["path"] == str(tmp_path / "snap.jsonl")
    assert saved["user_agents"] == ["GPTBot", "CCBot"]
    assert (saved["backend"], saved["status_policy"]) == ("protego", "paper")
    md = (tmp_path / "out" / "retention_stats.md").read_text()
    assert "2024-12-31" in md and "GPTBot, CCBot" in md and "protego" in md and "paper" in md


def test_dcg_counts_an_lm_eval_group_once():
    def results(group, a, b):
        return {
            "results": {
                "mmlu": {"alias": "mmlu", "acc,none": group},
                "mmlu_a": {"alias": " - a", "acc,none": a},
                "mmlu_b": {"alias": " - b", "acc,none": b},
                "piqa": {"alias": "piqa", "acc,none": 0.5},
            },
            "groups": {"mmlu": {"acc,none": group}},
            "group_subtasks": {"mmlu": ["mmlu_a", "mmlu_b"], "piqa": []},
        }

    report = compute_dcg(results(0.5, 0.4, 0.6), results(0.45, 0.4, 0.5), metric="acc")
    assert [r["task"] for r in report.rows] == ["mmlu", "piqa"]
    assert report.mean_gap == pytest.approx((10.0 + 0.0) / 2)
    # a subtask asked for by name is still reported
    report = compute_dcg(results(0.5, 0.4, 0.6), results(0.45, 0.4, 0.5), metric="acc", tasks=["mmlu_b"])
    assert [r["task"] for r in report.rows] == ["mmlu_b"]


@pytest.mark.parametrize("url", ["a.com/private/x", "//a.com/private/x", "https://a.com/private/x"])
def test_protego_reference_reads_scheme_less_urls(url):
    from protego import Protego

    from hf_ext.compliance.robots import protego_disallowed_agents

    parser = Protego.parse("User-agent: *\nDisallow: /private\n")
    assert protego_disallowed_agents(parser, url, ["GPTBot", "CCBot"]) == ("GPTBot", "CCBot")
    checker = RobotsCompliance({"a.com": "User-agent: *\nDisallow: /private\n"}, user_agents=["GPTBot", "CCBot"])
    assert checker.disallowed_agents(url) == protego_disallowed_agents(parser, url, ["GPTBot", "CCBot"])


def test_non_string_url_column_is_refused_up_front_naming_it():
    checker = RobotsCompliance({"a.com": "User-agent: *\nDisallow: /\n"})
    ids = datasets.Dataset.from_dict({"doc_id": [1, 2], "text": ["a", "b"]})
    with pytest.raises(TypeError, match="url_column='doc_id'.*cast_column"):
        annotate_compliance(ids, checker, url_column="doc_id")
    # an all-missing column (null type) is still accepted
    empty = datasets.Dataset.from_dict({"url": [None, None]})
    assert annotate_compliance(empty, checker)["robots_compliant"] == [True, True]


def test_dcg_reads_lm_eval_groups_without_aggregation_and_skips_bookkeeping_keys():
    """A group with no aggregated metric has a row with only its name: its tasks count instead (the DCG raised on it);
    lm-eval's `sample_len` is not a metric, so one-metric tasks need no `metric=`. The evaluation helpers read the
    same output the same way."""
    from hf_ext.evaluation import task_scores

    def results(a, b):
        return {
            "results": {
                "grp": {"name": "grp", "alias": "grp"},
                "t_a": {"alias": " - t_a", "acc,none": a, "acc_stderr,none": 0.01, "sample_len": 40},
                "t_b": {"alias": " - t_b", "acc,none": b, "acc_stderr,none": 0.01, "sample_len": 40},
            },
            "group_subtasks": {"grp": ["t_a", "t_b"], "t_a": [], "t_b": []},
        }

    report = compute_dcg(results(0.5, 0.4), results(0.25, 0.4))
    assert {r["task"]: r["gap"] for r in report.rows} == pytest.approx({"t_a": 50.0, "t_b": 0.0})
    assert task_scores(results(0.5, 0.4)) == pytest.approx({"t_a": 0.5, "t_b": 0.4})


def test_a_single_task_name_is_one_task_not_its_characters():
    from hf_ext.evaluation import accuracy_retention

    full, compliant = {"ppl": 10.0, "acc": 0.5}, {"ppl": 12.0, "acc": 0.4}
    report = compute_dcg(full, compliant, lower_is_better="ppl")
    assert {r["task"]: r["gap"] for r in report.rows} == pytest.approx({"ppl": 20.0, "acc": 20.0})
    assert [r["task"] for r in compute_dcg(full, compliant, tasks="acc").rows] == ["acc"]
    kept = accuracy_retention(full, compliant, lower_is_better="ppl")["per_task"]
    assert kept == pytest.approx({"ppl": 100 * 10 / 12, "acc": 80.0})
    with pytest.raises(TypeError, match="lower_is_better"):
        compute_dcg(full, compliant, lower_is_better=3)


@pytest.mark.parametrize(
    "url,host",
    [
        ("mailto:bob@a.com", ""),
        ("MAILTO:bob@a.com?subject=x", ""),
        ("javascript:void(0)", ""),
        ("data:text/html,<a href=//a.com/>", ""),
        ("urn:isbn:0451450523", ""),
        ("tel:+41-21-693-11-11", ""),
        ("tel:5551234", ""),
        ("SMS:5551234", ""),
        ("file:/etc/passwd", ""),
        ("mailto:", ""),
        ("http:a.com/p", "a.com"),
        ("https:/a.com/p", "a.com"),
        ("HTTPS:\\\\a.com\\p", "a.com"),
        # unchanged: hosts with ports, bare IPv6 store keys, hierarchical URLs of any scheme
        ("localhost:8080/x", "localhost"),
        ("a.com:8080", "a.com"),
        ("a.com:", "a.com"),
        ("fe80::1", "fe80::1"),
        ("ftp://a.com/x", "a.com"),
        ("//a.com/x", "a.com"),
    ],
)
def test_a_uri_without_an_authority_has_no_host(url, host):
    """`mailto:bob@a.com`, `javascript:...`, `data:...` name no web host, so no robots.txt governs them; they used to be
    read as `host:port` (`javascript`, `data`) or through the userinfo (`a.com`), so a mail address was dropped with
    a.com's pages. The special web schemes without slashes (`http:a.com/p`) are read as browsers read them."""
    assert normalize_host(url) == host


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_opaque_uris_are_not_judged_by_a_hosts_robots_txt(backend):
    if backend == "google":
        pytest.importorskip("robotstxt")
    store = {"a.com": "User-agent: *\nDisallow: /\n", "javascript": "User-agent: *\nDisallow: /\n"}
    checker = RobotsCompliance(store, backend=backend)
    urls = ["mailto:bob@a.com", "javascript:void(0)", "http:a.com/p", "https://a.com/p"]
    expected = [True, True, False, False]
    assert [checker.is_compliant(u) for u in urls] == expected
    assert checker.is_compliant_batch(urls) == expected


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_web_schemes_without_slashes_are_judged_on_their_real_path(backend):
    """`http:a.com/q` is a.com's `/q`: Protego used to get it unchanged and read the path `/a.com/q`."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    checker = RobotsCompliance({"a.com": "User-agent: *\nDisallow: /a.com\nDisallow: /p\n"}, backend=backend)
    urls = ["http:a.com/q", "https:/a.com/q", "http:a.com/p", "https:/a.com/p", "HTTPS:\\\\a.com/p"]
    expected = [True, True, False, False, False]
    assert [checker.is_compliant(u) for u in urls] == expected
    assert checker.is_compliant_batch(urls) == expected


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_surrounding_whitespace_neither_poisons_the_cache_nor_moves_the_path(backend):
    """` https://b.com/y` used to be cached under the prefix ` https:`, so every later ` https://...` URL got b.com's
    policy; and ` http://a.com/x` was read with the path `//a.com/x`."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    store = {"b.com": None, "a.com": "User-agent: *\nDisallow: /x\n"}
    urls = [" https://b.com/y", " https://a.com/x", "\thttp://a.com/x\n", "a.com/x ", " ", "https://a.com/y"]
    expected = [True, False, False, False, True, True]
    assert [RobotsCompliance(store, backend=backend).is_compliant(u) for u in urls] == expected
    assert RobotsCompliance(store, backend=backend).is_compliant_batch(urls) == expected
    assert RobotsCompliance(store, backend=backend).policy_for_url(" https://a.com/x").host == "a.com"


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_a_host_without_a_path_does_not_take_the_path_of_a_cached_prefix(backend):
    """After `https://a.com/x` cached the prefix `https://a.com`, the batch loop read `https://a.com` (path `/`) with
    the path starting at index -1, its last character: `/m`, which `Disallow: /m` dropped."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    store = {"a.com": "User-agent: *\nDisallow: /m\n"}
    urls = ["https://a.com/x", "https://a.com", "https://a.com/m", "https://a.com?m", "a.com"]
    expected = [True, True, False, True, True]
    assert RobotsCompliance(store, backend=backend).is_compliant_batch(urls) == expected
    assert [RobotsCompliance(store, backend=backend).is_compliant(u) for u in urls] == expected


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_a_backslash_ending_the_host_starts_the_path_in_every_backend(backend):
    """`https://a.com\\p` is a.com's `/p` for browsers and Google's parser, and the host lookup already read it so;
    rfc9309 and Protego read the path `/` (kept), and rfc9309's batch loop depended on what the cache held."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    store = {"a.com": "User-agent: *\nDisallow: /p\n"}
    urls = ["https://a.com\\p", "https://a.com\\p/q", "a.com\\p", "//a.com\\p", "https:\\\\a.com\\p",
            "https://u@a.com:8080\\p?x", "https://a.com/q\\p", "https://a.com?q\\p", "https://a.com/p\\q"]  # fmt: skip
    expected = [False, False, False, False, False, False, True, True, False]
    for order in (1, -1):
        assert RobotsCompliance(store, backend=backend).is_compliant_batch(urls[::order]) == expected[::order]
    assert [RobotsCompliance(store, backend=backend).is_compliant(u) for u in urls] == expected
    assert url_path("https://a.com\\p\\q?x") == "/p%5Cq?x"


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_a_slash_or_backslash_in_the_query_of_a_pathless_url_stays_in_the_query(backend):
    """`https://a.com?x=\\q` was handed to Protego as `https://a.com?x=/q`, and Google's parser got the query twice
    (`https://a.com?x=/?x=%5Cq`): the host ended at a slash that comes after the `?`."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    cases = [
        ("https://a.com?x=\\q", "Disallow: /?x=/", True),
        ("https://a.com?x=\\q", "Disallow: /*%5C", False),
        ("https://a.com?x=/q", "Disallow: /?x=/?", True),
        ("https://a.com?x=\\q", "Disallow: /?x=/?", True),
        ("https://a.com#f/p", "Disallow: /p", True),
    ]
    for url, rule, compliant in cases:
        store = {"a.com": f"User-agent: *\n{rule}\n"}
        assert RobotsCompliance(store, backend=backend).is_compliant(url) is compliant, (url, rule)
        assert RobotsCompliance(store, backend=backend).is_compliant_batch([url]) == [compliant], (url, rule)


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
@pytest.mark.parametrize("url", ["https://\\a.com/p", "https:///a.com/p", "https:/\\a.com/p", "https:\\\\a.com/p"])
def test_extra_slashes_after_a_web_scheme_still_name_the_host(backend, url):
    """`https://\\a.com/p` and `https:///a.com/p` had the host '' (kept unchecked) while `https:/\\a.com/p` was a.com."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    assert normalize_host(url) == "a.com"
    checker = RobotsCompliance({"a.com": "User-agent: *\nDisallow: /p\n"}, backend=backend)
    assert not checker.is_compliant(url) and checker.is_compliant_batch([url]) == [False]


def test_authority_end_is_minus_one_when_a_fragment_comes_before_the_slash():
    """Documented contract of the exported helper: no path when `?` or `#` comes before the first `/` or `\\`
    (kills C4: dropping the `#` check; robots decisions stay right only because every caller re-guards `#`)."""
    for url in ("https://a.com#f/p", "https://a.com#f\\p", "a.com#/x", "//a.com#x/y"):
        assert authority_end(url, authority_start(url)) == -1, url
    for url in ("https://a.com?q/p", "https://a.com?q\\p"):
        assert authority_end(url, authority_start(url)) == -1, url
    assert authority_end("https://a.com/p#f", 8) == 13


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http:a.com\\p", "http://a.com/p"),
        ("https:/a.com\\p", "https://a.com/p"),
        ("http:a.com\\p/q", "http://a.com/p/q"),
        ("HTTP:a.com\\p?x", "HTTP://a.com/p?x"),
    ],
)
def test_absolute_url_of_a_slashless_web_scheme_turns_the_backslash_ending_the_host_into_a_slash(url, expected):
    """`http:a.com\\p` gains its `//` and the backslash ending its host becomes `/` (kills R2: not shifting `start`
    by the two inserted slashes leaves the host's backslash, so Protego would read the host `a.com\\p`)."""
    assert absolute_url(url) == expected


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_a_slashless_scheme_and_a_backslash_ending_the_host_keep_the_path(backend):
    if backend == "google":
        pytest.importorskip("robotstxt")
    store = {"a.com": "User-agent: *\nDisallow: /p\n"}
    urls = ["http:a.com\\p", "https:/a.com\\p", "http:a.com\\q", "ftp:a.com\\p"]
    expected = [False, False, True, False]
    assert [RobotsCompliance(store, backend=backend).is_compliant(u) for u in urls] == expected
    assert RobotsCompliance(store, backend=backend).is_compliant_batch(urls) == expected


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_a_pathless_url_does_not_take_the_cached_prefix_of_its_own_spelling_minus_one_character(backend):
    """The batch loop looks a cached prefix up only for a URL with a path (kills R8: with `slash == -1`,
    `url[:slash]` of `https://a.com` is `https://a.co`, the prefix `https://a.co/m` cached, so a.com got a.co's
    policy and the path `/m`, its last character; the existing regression test uses one host and misses it)."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    store = {"a.co": "User-agent: *\nDisallow: /m\n", "a.com": None}
    urls = ["https://a.co/m", "https://a.com", "https://a.co/x", "https://a.com?q"]
    expected = [False, True, True, True]
    assert RobotsCompliance(store, backend=backend).is_compliant_batch(urls) == expected
    assert [RobotsCompliance(store, backend=backend).is_compliant(u) for u in urls] == expected


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_a_backslash_inside_the_path_is_percent_encoded_for_every_backend(backend):
    """`https://a.com/x\\p` has the path `/x%5Cp` in every backend (kills R6: `google_url` handing Google's parser
    the raw URL, which reads the backslash as is, so `Disallow: /*%5C` no longer matched; the existing test of
    `/*%5C` uses a URL without a path, which `google_url` passes through unchanged anyway)."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    store = {"a.com": "User-agent: *\nDisallow: /*%5C\n"}
    urls = ["https://a.com/x\\p", "https://a.com/x", "a.com/x\\p", "//a.com/x\\p"]
    expected = [False, True, False, False]
    assert [RobotsCompliance(store, backend=backend).is_compliant(u) for u in urls] == expected
    assert RobotsCompliance(store, backend=backend).is_compliant_batch(urls) == expected


@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_the_batch_loop_reads_the_path_of_an_uncached_url_like_the_single_call(backend):
    """`https://a.com;x/p` has the path `/;x/p` (parameters start at `;`); its prefix holds `;`, so it is never
    cached and the batch loop must read it with `url_path`, as `is_compliant` does (kills R9: using
    `path_from(url, slash)` for every URL with a slash gives `/p`, which `Disallow: /p` dropped in the batch only)."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    store = {"a.com": "User-agent: *\nDisallow: /p\n"}
    urls = ["https://a.com;x/p", "https://a.com/p", "https://a.com:80;x/p", "https://a.com;x/q"]
    single = [RobotsCompliance(store, backend=backend).is_compliant(u) for u in urls]
    assert RobotsCompliance(store, backend=backend).is_compliant_batch(urls) == single
    assert single[1] is False


def test_a_snapshot_with_two_records_of_one_host_is_refused(tmp_path):
    """Two fetches of one host in a snapshot are ambiguous: the later line used to win silently, whatever its date
    (a Jan-2025 opt-out lost to a 2023 allow-all), also across spellings that normalise to one host."""
    import json

    from hf_ext.compliance import RobotsTxtStore

    rows = [
        {"host": "a.com", "robots_txt": "User-agent: GPTBot\nDisallow: /", "fetched_at": "2025-01-15"},
        {"host": "A.COM:8080", "robots_txt": "User-agent: *\nAllow: /", "fetched_at": "2023-06-01"},
    ]
    path = tmp_path / "snap.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"host 'A.COM:8080' is recorded twice .*record 0.*record 1"):
        RobotsTxtStore.load(path)


def test_a_fetch_older_than_the_stored_one_does_not_replace_it():
    from hf_ext.compliance import RobotsTxtStore
    from hf_ext.compliance.store import RobotsRecord

    store = RobotsTxtStore()
    store.update_from_fetch(RobotsRecord("a.com", "User-agent: GPTBot\nDisallow: /", "2025-01-15", 200))
    kept = store.update_from_fetch(RobotsRecord("a.com", "User-agent: *\nAllow: /", "2020-03-01", 200))
    assert kept.fetched_at == "2025-01-15" and "Disallow" in kept.text
    newer = store.update_from_fetch(RobotsRecord("a.com", None, "2025-06-01", 404))
    assert newer.fetched_at == "2025-06-01" and newer.status_class == "unavailable"


def test_datetime_fetch_dates_are_stored_as_iso_strings_and_other_types_refused(tmp_path):
    """A Parquet snapshot with a timestamp `fetched_at` column (what pandas writes for datetimes) loads with ISO
    strings, so it can be saved and reported (it used to crash the recipe after all its work); an int is refused."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_ext.compliance import RobotsTxtStore

    table = pa.table({"host": ["a.com"], "robots_txt": ["User-agent: *\nDisallow: /x"],
                      "fetched_at": [dt.datetime(2025, 1, 15, 10, 30)]})  # fmt: skip
    pq.write_table(table, tmp_path / "snap.parquet")
    store = RobotsTxtStore.load(tmp_path / "snap.parquet")
    assert store._records["a.com"].fetched_at == "2025-01-15T10:30:00"
    store.save(tmp_path / "again.jsonl")
    assert RobotsTxtStore.load(tmp_path / "again.jsonl")._records["a.com"].fetched_at == "2025-01-15T10:30:00"
    with pytest.raises(TypeError, match="fetched_at of 'b.com' must be an ISO date string"):
        store.add("b.com", None, fetched_at=20250115)


def test_folder_snapshot_keeps_hosts_recorded_with_a_status_or_error_but_no_file(tmp_path):
    """RFC 9309: a 5xx or a fetch without answer means disallow everything. A folder snapshot whose `_snapshot.json`
    records such a host (without `"missing": true`, as third-party folders write it) used to drop it: every page of
    the unreachable host was allowed."""
    import json

    from hf_ext.compliance import RobotsCompliance, RobotsTxtStore

    (tmp_path / "a.com.txt").write_text("User-agent: *\nAllow: /")
    meta = {"fetched_at": "2025-01-15", "hosts": {"c.com": {"status": 503}, "i.com": {"error": "timeout"},
                                                    "g.com": {"status": 404}}}  # fmt: skip
    (tmp_path / "_snapshot.json").write_text(json.dumps(meta))
    store = RobotsTxtStore.load(tmp_path)
    assert store.status_counts()["unreachable"] == 2 and store.status_counts()["unavailable"] == 1
    rc = RobotsCompliance(store, user_agents=["GPTBot"])
    assert not rc.is_compliant("https://c.com/x") and not rc.is_compliant("https://i.com/x")
    assert rc.is_compliant("https://g.com/x") and rc.is_compliant("https://a.com/x")


@pytest.mark.parametrize("relative", ["False", 0, None])
def test_compute_dcg_refuses_a_relative_flag_that_is_not_a_bool(relative):
    """`relative="False"` is truthy: it gave percent gaps where the caller asked for absolute ones."""
    with pytest.raises(TypeError, match="relative must be True"):
        compute_dcg({"a": 0.5}, {"a": 0.4}, relative=relative)


@pytest.mark.parametrize("name", ["robots.txt", "robots"])
def test_robots_filter_refuses_a_snapshot_file_of_unknown_format_at_construction(tmp_path, name):
    """A snapshot path that is a file but neither .jsonl nor .parquet is refused when the step is built, not by
    every worker on its first document."""
    from hf_ext.compliance import RobotsTxtFilter

    bad = tmp_path / name
    bad.write_text("User-agent: *\nDisallow: /\n")
    with pytest.raises(ValueError, match="cannot infer the snapshot format|is a file but not .jsonl or .parquet"):
        RobotsTxtFilter(bad)
    store = tmp_path / "snap.jsonl"
    RobotsTxtStore.from_dict({"example.com": "User-agent: *\nDisallow: /\n"}).save(store)
    RobotsTxtFilter(store)
