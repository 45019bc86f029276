"""Snapshot store round trips, retention statistics and the data compliance gap."""

import json
import math

import pytest

from hf_ext.compliance import (
    RobotsCompliance,
    RobotsTxtStore,
    annotate_compliance,
    compute_dcg,
    compute_retention_stats,
    load_example_robots,
)
from hf_ext.compliance.store import record_from_response


@pytest.mark.parametrize("name", ["snapshot", "snapshot.jsonl", "snapshot.parquet"])
def test_store_round_trips_in_every_format(tmp_path, name):
    store = RobotsTxtStore(fetched_at="2025-01-15")
    store.add("Example.COM:443", "User-agent: *\nDisallow: /x\n", status=200)
    store.add("bücher.example", b"\xef\xbb\xbfUser-agent: GPTBot\nDisallow: /\n", fetched_at="2025-01-20")
    store.add("gone.org", None, status=404)
    path = store.save(tmp_path / name)
    loaded = RobotsTxtStore.load(path)
    assert set(loaded) == {"example.com", "xn--bcher-kva.example", "gone.org"}
    assert loaded["example.com"].text == "User-agent: *\nDisallow: /x\n"
    assert loaded["bücher.example"].text.startswith("User-agent: GPTBot")  # BOM removed, key normalised
    assert loaded["bücher.example"].fetched_at == "2025-01-20"
    assert loaded["example.com"].fetched_at == "2025-01-15"
    assert loaded["gone.org"].text is None
    assert loaded["example.com"].status == 200 and loaded["gone.org"].status == 404
    c = RobotsCompliance(loaded)
    assert not c.is_compliant("https://xn--bcher-kva.example/a") and c.is_compliant("https://gone.org/a")


def test_store_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        RobotsTxtStore.load(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"host": "a.org", "robots_txt": ""}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        RobotsTxtStore.load(bad)
    bad.write_text('{"robots_txt": "x"}\n')
    with pytest.raises(ValueError, match="host"):
        RobotsTxtStore.load(bad)
    with pytest.raises(ValueError, match="infer"):
        RobotsTxtStore().save(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="host name"):
        RobotsTxtStore().add("https:///", "x")  # (`https:///path` is the host `path`, as browsers read it)
    with pytest.raises(TypeError, match="robots.txt text"):
        RobotsTxtStore().add("a.org", 3)


def test_fetch_status_handling_is_permissive():
    assert record_from_response("a.org", 200, b"User-agent: *\nDisallow: /", "d").text.startswith("User-agent")
    assert record_from_response("a.org", 404, b"<html>", "d").text is None
    assert record_from_response("a.org", 503, None, "d").text is None
    assert record_from_response("a.org", None, None, "d").status is None


def test_example_snapshot_covers_the_corpus_hosts(corpus):
    store = load_example_robots()
    hosts = {u.split("/")[2] for u in corpus["url"]}
    assert hosts == set(store)
    assert store["concurrency.docs.python.org"].text is None
    assert all(r.fetched_at == "2025-01-15" for r in store.values())


TOY = {
    "url": [
        "https://a.org/keep/1",
        "https://a.org/drop/1",
        "https://a.org/drop/2",
        "https://b.org/x",
        "https://c.org/x",
    ],
    "text": ["one two three", "four five", "six", "seven eight nine ten", "eleven"],
}
TOY_ROBOTS = {"a.org": "User-agent: GPTBot\nDisallow: /drop/\n", "c.org": "User-agent: *\nDisallow: /\n"}


def test_retention_stats_are_exact_on_toy_data(tmp_path):
    import datasets

    ds = annotate_compliance(datasets.Dataset.from_dict(TOY), RobotsCompliance(TOY_ROBOTS))
    stats = compute_retention_stats(ds)
    assert stats.overall["docs"] == 5 and stats.overall["docs_removed"] == 3
    assert stats.overall["tokens"] == 11 and stats.overall["tokens_removed"] == 2 + 1 + 1
    rows = {r["domain"]: r for r in stats.per_domain}
    assert rows["a.org"]["docs_removed"] == 2 and rows["a.org"]["tokens_removed"] == 3
    assert rows["a.org"]["tokens_removed_pct"] == pytest.approx(100 * 3 / 6)
    assert rows["b.org"]["docs_removed"] == 0
    assert rows["c.org"]["docs_removed_pct"] == 100.0
    assert stats.per_agent["GPTBot"] == 3 and stats.per_agent["*"] == 1
    table = stats.to_table()
    assert "| ALL | 5 | 3 | 60.00 | 11 | 4 | 36.36 |" in table
    loaded = json.loads(stats.to_json(tmp_path / "stats.json"))
    assert loaded["overall"]["tokens_removed"] == 4
    assert json.loads((tmp_path / "stats.json").read_text())["per_agent"]["GPTBot"] == 3


def test_retention_stats_with_tokenizer_and_domain_column(small_tokenizer):
    import datasets

    ds = annotate_compliance(
        datasets.Dataset.from_dict({**TOY, "domain": ["A", "A", "A", "B", "C"]}), RobotsCompliance(TOY_ROBOTS)
    )
    stats = compute_retention_stats(ds, domain_column="domain", tokenizer=small_tokenizer)
    n = [len(small_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TOY["text"]]
    assert stats.overall["tokens"] == sum(n)
    assert stats.overall["tokens_removed"] == n[1] + n[2] + n[4]
    assert {r["domain"] for r in stats.per_domain} == {"A", "B", "C"}
    assert stats.token_unit.startswith("tokenizer")
    with pytest.raises(ValueError, match="compliant_column"):
        compute_retention_stats(datasets.Dataset.from_dict(TOY))
    with pytest.raises(ValueError, match="domain_column"):
        compute_retention_stats(ds, domain_column="site")


def test_dcg_relative_absolute_and_lower_is_better():
    full = {"arc": 0.50, "pubmedqa": 0.60, "wikitext_ppl": 20.0}
    comp = {"arc": 0.50, "pubmedqa": 0.54, "wikitext_ppl": 22.0}
    rel = compute_dcg(full, comp, lower_is_better=["wikitext_ppl"])
    gaps = {r["task"]: r["gap"] for r in rel.rows}
    assert gaps["arc"] == pytest.approx(0.0)
    assert gaps["pubmedqa"] == pytest.approx(10.0)
    assert gaps["wikitext_ppl"] == pytest.approx(10.0)  # perplexity went up: compliance hurts, positive gap
    assert rel.mean_gap == pytest.approx(20.0 / 3)
    ab = compute_dcg(full, comp, relative=False, tasks=["arc", "pubmedqa"])
    assert [r["gap"] for r in ab.rows] == pytest.approx([0.0, 0.06])
    assert "| pubmedqa | 0.6000 | 0.5400 | +10.00 |" in rel.to_table()
    assert json.loads(rel.to_json())["mean_gap"] == pytest.approx(rel.mean_gap)


def test_dcg_reads_lm_eval_and_evaluate_results():
    lm_eval = {"results": {"arc_easy": {"acc,none": 0.7, "acc_stderr,none": 0.01, "acc_norm,none": 0.72}}}
    lm_eval_c = {"results": {"arc_easy": {"acc,none": 0.63, "acc_stderr,none": 0.01, "acc_norm,none": 0.7}}}
    report = compute_dcg(lm_eval, lm_eval_c, metric="acc")
    assert report.rows[0]["gap"] == pytest.approx(10.0)
    evaluate_style = compute_dcg({"sst2": {"accuracy": 0.9}}, {"sst2": {"accuracy": 0.9}})
    assert evaluate_style.rows[0]["gap"] == 0.0
    with pytest.raises(ValueError, match="metric"):
        compute_dcg(lm_eval, lm_eval_c)  # acc and acc_norm: ambiguous


def test_dcg_reads_only_the_requested_tasks():
    """`tasks=` limits what is read: a task of the same lm-eval run that lacks `metric` (wikitext beside arc_easy) used
    to raise "pass metric=<name>" although metric was passed and the task was not asked for."""
    full = {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.60, "acc_norm,none": 0.55},
                        "wikitext": {"alias": "wikitext", "word_perplexity,none": 20.0, "bits_per_byte,none": 0.6}}}
    comp = {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.57, "acc_norm,none": 0.50},
                        "wikitext": {"alias": "wikitext", "word_perplexity,none": 22.0, "bits_per_byte,none": 0.7}}}  # fmt: skip
    report = compute_dcg(full, comp, metric="acc", tasks=["arc_easy"])
    assert [r["task"] for r in report.rows] == ["arc_easy"] and report.mean_gap == pytest.approx(5.0)
    assert compute_dcg({"a": 0.5, "b": "n/a"}, {"a": 0.4, "b": None}, tasks="a").mean_gap == pytest.approx(20.0)
    # a requested task without the metric is named, with what it has and the way out
    with pytest.raises(ValueError, match=r"non_compliant\['wikitext'\] has no metric 'acc' \(it has .*tasks=\[\.\.\.\]"):
        compute_dcg(full, comp, metric="acc", tasks=["arc_easy", "wikitext"])
    with pytest.raises(ValueError, match=r"tasks \['piqa'\] are missing"):
        compute_dcg(full, comp, metric="acc", tasks=["arc_easy", "piqa"])
    with pytest.raises(ValueError, match=r"tasks \['piqa'\] are missing"):
        compute_dcg(full, comp, metric="acc", tasks=["piqa"])


def test_dcg_undefined_relative_gap_can_be_reported_as_nan():
    report = compute_dcg({"a": 0.0, "b": 0.5}, {"a": 0.1, "b": 0.4}, undefined="nan")
    gaps = {r["task"]: r["gap"] for r in report.rows}
    assert math.isnan(gaps["a"]) and gaps["b"] == pytest.approx(20.0)
    assert report.mean_gap == pytest.approx(20.0)  # the mean covers the defined gaps only
    assert "| a | 0.0000 | 0.1000 | n/a |" in report.to_table()
    assert json.loads(report.to_json())["rows"][0]["gap"] is None
    all_zero = compute_dcg({"a": 0.0}, {"a": 0.1}, undefined="nan")
    assert math.isnan(all_zero.mean_gap) and all_zero.to_dict()["mean_gap"] is None
    assert "| **mean** | | | n/a |" in all_zero.to_table()
    assert compute_dcg({"a": 0.0}, {"a": 0.1}, relative=False, undefined="nan").rows[0]["gap"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="undefined"):
        compute_dcg({"a": 1.0}, {"a": 1.0}, undefined="skip")


def test_dcg_input_errors():
    with pytest.raises(ValueError, match="different tasks"):
        compute_dcg({"a": 1.0, "b": 1.0}, {"a": 1.0})
    with pytest.raises(ValueError, match="relative=False"):
        compute_dcg({"a": 0.0}, {"a": 0.1})
    with pytest.raises(ValueError, match="finite"):
        compute_dcg({"a": float("nan")}, {"a": 0.1})
    with pytest.raises(TypeError, match="non_compliant"):
        compute_dcg([0.1], {"a": 0.1})
    with pytest.raises(ValueError, match="lower_is_better"):
        compute_dcg({"a": 1.0}, {"a": 1.0}, lower_is_better=["b"])
