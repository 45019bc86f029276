"""Regression tests of audit pass 31 (cp31)."""

import json

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore


# F1: a snapshot written with pandas holds its status column as float64 (200.0, and null / NaN where no status) -----
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_snapshot_with_whole_float_statuses_loads_as_int_statuses(tmp_path, fmt):
    rows = [
        {"host": "a.com", "robots_txt": "User-agent: GPTBot\nDisallow: /\n", "status": 200.0, "error": None},
        {"host": "b.com", "robots_txt": None, "status": 404.0, "error": None},
        {"host": "c.com", "robots_txt": None, "status": 503.0, "error": None},
        {"host": "d.com", "robots_txt": None, "status": float("nan"), "error": "TimeoutError"},
    ]
    path = tmp_path / f"snap.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # NaN written as JSON's NaN, as json.dumps does
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)  # status: a double column
    store = RobotsTxtStore.load(path)
    assert {h: (r.status, r.status_class) for h, r in store.items()} == {
        "a.com": (200, "available"),
        "b.com": (404, "unavailable"),
        "c.com": (503, "unreachable"),
        "d.com": (None, "unreachable"),
    }
    assert all(r.status is None or type(r.status) is int for r in store.values())
    checker = RobotsCompliance(store, user_agents=["GPTBot"])
    assert checker.is_compliant_batch(["https://a.com/x", "https://b.com/x", "https://c.com/x"]) == [False, True, False]


def test_snapshot_with_a_fractional_status_is_still_refused(tmp_path):
    path = tmp_path / "snap.jsonl"
    path.write_text(json.dumps({"host": "a.com", "robots_txt": None, "status": 404.5}) + "\n")
    with pytest.raises(TypeError, match="status of 'a.com' must be an int"):
        RobotsTxtStore.load(path)


# F2: a ClassLabel domain column is reported by its label names (code 0 was "<no host>"; a tie crashed the sort) -----
def test_retention_stats_read_a_classlabel_domain_column_by_name():
    import datasets

    from hf_ext.compliance import annotate_compliance, compute_retention_stats

    features = datasets.Features(
        {"url": datasets.Value("string"), "text": datasets.Value("string"),
         "domain": datasets.ClassLabel(names=["news", "science", "code"])}
    )  # fmt: skip
    urls = ["https://a.com/private/1", "https://a.com/2", "https://a.com/3", "https://a.com/private/4", "https://a.com/5"]
    ds = datasets.Dataset.from_dict(
        {"url": urls, "text": ["a b", "c d e", "f", "g h i j", "k"], "domain": [0, 0, 1, 2, 2]}, features=features
    )
    checker = RobotsCompliance({"a.com": "User-agent: GPTBot\nDisallow: /private/\n"})
    stats = compute_retention_stats(annotate_compliance(ds, checker), domain_column="domain")
    rows = {r["domain"]: (r["docs"], r["docs_removed"], r["tokens_removed"]) for r in stats.per_domain}
    assert rows == {"news": (2, 1, 2), "science": (1, 0, 0), "code": (2, 1, 4)}
    # two domains removing the same number of tokens (0 here) sort by name: they were an int and "<no host>"
    kept_all = ds.map(lambda _: {"url": "https://a.com/1"})
    stats = compute_retention_stats(annotate_compliance(kept_all, checker), domain_column="domain")
    assert [r["domain"] for r in stats.per_domain] == ["code", "news", "science"]


# F3: the snapshot format is read from the extension in any letter case; the CLI names --robots, not format= -------------
def test_snapshot_extension_in_upper_case_is_read(tmp_path):
    from hf_ext.compliance import RobotsTxtFilter, load_example_robots

    store = load_example_robots()
    for name in ("SNAP.JSONL", "Snap.Parquet"):
        store.save(tmp_path / name)
        assert len(RobotsTxtStore.load(tmp_path / name)) == len(store)
        step = RobotsTxtFilter(str(tmp_path / name))
        assert len(step.checker.store) == len(store)


def test_compliance_recipe_refuses_an_unknown_snapshot_extension_naming_the_flag(tmp_path):
    from hf_ext.recipes.compliance import main

    bad = tmp_path / "robots.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=r"--robots=.*neither a folder nor a \.jsonl or \.parquet") as err:
        main(["--robots", str(bad), "--output_dir", str(tmp_path / "out")])
    assert "format=" not in str(err.value)
    assert not (tmp_path / "out").exists()


# F4: the coarse datatrove step given its blocked_domains does not load the snapshot (every task loaded it whole) -------
@pytest.mark.parametrize("missing_url", ["keep", "drop"])
def test_coarse_datatrove_step_with_a_given_list_does_not_load_the_snapshot(tmp_path, monkeypatch, missing_url):
    pytest.importorskip("datatrove")
    from datatrove.data import Document

    from hf_ext.compliance import RobotsTxtFilter

    path = tmp_path / "snap.jsonl"
    RobotsTxtStore.from_dict({"x.com": "User-agent: GPTBot\nDisallow: /\n"}).save(path)
    step = RobotsTxtFilter(str(path), mode="coarse", blocked_domains=["x.com"], missing_url=missing_url)

    def refuse(*args, **kwargs):
        raise AssertionError("the snapshot was loaded")

    monkeypatch.setattr(RobotsTxtStore, "load", refuse)
    urls = ["https://x.com/a", "https://blog.x.com/b", "https://y.com/c", None]
    docs = [Document(text="t", id=str(i), metadata={"url": u}) for i, u in enumerate(urls)]
    kept = [d.metadata["url"] for d in step.run(iter(docs))]
    assert kept == (["https://y.com/c", None] if missing_url == "keep" else ["https://y.com/c"])


def test_numpy_integer_status_is_stored_as_an_int_and_saves(tmp_path):
    np = pytest.importorskip("numpy")
    store = RobotsTxtStore()
    store.add("a.com", None, status=np.int64(404))  # a status read from a DataFrame row
    store.add("b.com", None, status=np.int32(503))
    assert [(type(r.status), r.status_class) for r in store.values()] == [(int, "unavailable"), (int, "unreachable")]
    for name in ("snap", "snap.jsonl", "snap.parquet"):
        store.save(tmp_path / name)
        assert RobotsTxtStore.load(tmp_path / name)["b.com"].status == 503
    with pytest.raises(TypeError, match="status of 'c.com' must be an int"):
        store.add("c.com", None, status=np.bool_(True))


# F5: a missing (null) token count is refused naming token_column (it failed with a raw int(None) TypeError) -----------
def test_retention_stats_refuse_a_null_token_count_naming_the_column():
    import datasets

    from hf_ext.compliance import compute_retention_stats

    ds = datasets.Dataset.from_dict(
        {"url": ["https://a.com/1", "https://a.com/2"], "robots_compliant": [True, False], "n_tokens": [3, None]}
    )
    with pytest.raises(ValueError, match="token_column='n_tokens' has 1 missing"):
        compute_retention_stats(ds, token_column="n_tokens", agents_column=None)
    ok = compute_retention_stats(ds.select([0]), token_column="n_tokens", agents_column=None)
    assert ok.overall["tokens"] == 3
