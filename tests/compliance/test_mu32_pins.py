"""Tests pinning the pass-31 compliance changes against mutants that the cp31 tests let through (audit mu32)."""

import json

import pytest

from hf_ext.compliance import RobotsTxtStore


def test_folder_snapshot_with_whole_float_statuses_loads_as_int_statuses(tmp_path):
    """`_file_status` also reads the folder format's `_snapshot.json` (a host file's status and a host without one)."""
    store = RobotsTxtStore()
    store.add("a.com", "User-agent: *\nDisallow: /x\n", status=200)
    store.add("b.com", None, status=503)
    store.add("c.com", None, error="TimeoutError")
    path = tmp_path / "snap"
    store.save(path)
    meta = json.loads((path / "_snapshot.json").read_text())
    meta["hosts"]["a.com"]["status"] = 200.0
    meta["hosts"]["b.com"]["status"] = 503.0
    meta["hosts"]["c.com"]["status"] = float("nan")  # json.dumps writes NaN
    (path / "_snapshot.json").write_text(json.dumps(meta))
    loaded = RobotsTxtStore.load(path)
    assert {h: (r.status, r.status_class) for h, r in loaded.items()} == {
        "a.com": (200, "available"),
        "b.com": (503, "unreachable"),
        "c.com": (None, "unreachable"),
    }
    assert all(r.status is None or type(r.status) is int for r in loaded.values())


def _stats(domain, feature):
    import datasets

    from hf_ext.compliance import compute_retention_stats

    features = datasets.Features(
        {"url": datasets.Value("string"), "robots_compliant": datasets.Value("bool"),
         "n_tokens": datasets.Value("int64"), "domain": feature}
    )  # fmt: skip
    ds = datasets.Dataset.from_dict(
        {"url": ["https://a.com/1", "https://a.com/2", "https://a.com/3"], "robots_compliant": [True, False, True],
         "n_tokens": [1, 2, 4], "domain": domain},
        features=features,
    )  # fmt: skip
    stats = compute_retention_stats(ds, token_column="n_tokens", agents_column=None, domain_column="domain")
    return {r["domain"]: (r["docs"], r["tokens_removed"]) for r in stats.per_domain}


def test_classlabel_domain_without_a_label_is_reported_as_no_host():
    import datasets

    feature = datasets.ClassLabel(names=["news", "code"])
    assert _stats([-1, 0, 1], feature) == {"<no host>": (1, 0), "news": (1, 2), "code": (1, 0)}


def test_integer_domain_column_is_reported_by_its_values_as_names():
    import datasets

    # code 0 is a domain like any other (not "<no host>"), and the names sort as strings
    assert _stats([0, 0, 1], datasets.Value("int64")) == {"0": (2, 2), "1": (1, 0)}


def test_null_token_counts_outside_the_selected_rows_are_not_refused():
    import datasets

    from hf_ext.compliance import compute_retention_stats

    ds = datasets.Dataset.from_dict(
        {"url": ["https://a.com/1", "https://a.com/2", "https://a.com/3"], "robots_compliant": [True, False, False],
         "n_tokens": [3, None, 5]}
    )  # fmt: skip
    counted = ds.filter(lambda row: row["n_tokens"] is not None)  # an indices mapping over the whole table
    stats = compute_retention_stats(counted, token_column="n_tokens", agents_column=None)
    assert (stats.overall["tokens"], stats.overall["tokens_removed"]) == (8, 5)


def test_coarse_datatrove_step_keeps_a_missing_url_by_default_without_loading_the_snapshot(tmp_path, monkeypatch):
    pytest.importorskip("datatrove")
    from datatrove.data import Document

    from hf_ext.compliance import RobotsTxtFilter

    path = tmp_path / "snap.jsonl"
    RobotsTxtStore.from_dict({"x.com": "User-agent: GPTBot\nDisallow: /\n"}).save(path)
    # missing_url not passed: RobotsCompliance's default, "keep"
    step = RobotsTxtFilter(str(path), mode="coarse", blocked_domains=["x.com"])
    monkeypatch.setattr(RobotsTxtStore, "load", lambda *a, **k: pytest.fail("the snapshot was loaded"))
    docs = [Document(text="t", id=str(i), metadata={"url": u}) for i, u in enumerate(["https://x.com/a", None])]
    assert [d.metadata["url"] for d in step.run(iter(docs))] == [None]
