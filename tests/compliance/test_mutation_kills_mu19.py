"""Mutation run 19 (compliance): tests for mutants that survived the compliance suites.

- G7: `filter_compliant(mode="coarse")` leaves an earlier `annotate_compliance` output's `column` / `agents_column`
  as they are (documented: they hold URL-level decisions, which the domain-level mode does not make); a kept URL the
  snapshot disallows keeps its opt-out, so a later fine pass or `compute_retention_stats` still sees it. The fine
  mode, by contrast, marks its kept rows compliant.
- G8: with no `metric=` and no `lower_is_better=`, a task's perplexity-like key gives the DCG direction whichever side
  names it (a bare score on the other side pairs with that key).
"""

import datasets
import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore, annotate_compliance, compute_dcg, filter_compliant


def _annotated():
    store = RobotsTxtStore()
    store.add("part.com", "User-agent: CCBot\nDisallow: /private/\n")  # only some paths: not a blocked domain
    store.add("shut.net", "User-agent: *\nDisallow: /\n")  # closed: a blocked domain
    store.add("open.org", "User-agent: *\nAllow: /\n")
    checker = RobotsCompliance(store)
    urls = ["https://part.com/private/a", "https://part.com/b", "https://shut.net/x", "https://open.org/c"]
    ann = annotate_compliance(datasets.Dataset.from_dict({"url": urls, "i": list(range(len(urls)))}), checker)
    return ann, checker


def test_coarse_filter_keeps_the_url_level_annotations_of_the_kept_rows():
    ann, checker = _annotated()
    before = {r["url"]: r for r in ann.to_list()}
    assert before["https://part.com/private/a"]["robots_compliant"] is False
    assert before["https://part.com/private/a"]["disallowed_user_agents"]  # names CCBot
    kept = filter_compliant(ann, checker, mode="coarse")
    assert kept["url"] == ["https://part.com/private/a", "https://part.com/b", "https://open.org/c"]
    assert kept.to_list() == [before[u] for u in kept["url"]]  # every column as annotated, the opt-out included
    # a DatasetDict too
    kept_dict = filter_compliant(datasets.DatasetDict({"train": ann}), checker, mode="coarse")
    assert kept_dict["train"].to_list() == kept.to_list()


def test_fine_filter_marks_its_kept_rows_compliant():
    ann, checker = _annotated()
    kept = filter_compliant(ann, checker, mode="fine")
    assert kept["url"] == ["https://part.com/b", "https://open.org/c"]
    assert kept["robots_compliant"] == [True, True]
    assert kept["disallowed_user_agents"] == [[], []]


@pytest.mark.parametrize("key_on", ["compliant", "non_compliant"])
def test_dcg_direction_comes_from_the_perplexity_key_on_either_side(key_on):
    full, comp = {"wiki": 20.0}, {"wiki": 22.0}  # the compliant model's perplexity is 10% worse
    side = comp if key_on == "compliant" else full
    side["wiki"] = {"word_perplexity,none": side["wiki"]}
    report = compute_dcg(full, comp)
    assert report.rows[0]["gap"] == pytest.approx(10.0)
    assert report.mean_gap == pytest.approx(10.0)
    # an accuracy-like key on either side: higher is better, the same numbers are a gain of 10%
    side["wiki"] = {"acc,none": side["wiki"]["word_perplexity,none"]}
    assert compute_dcg(full, comp).rows[0]["gap"] == pytest.approx(-10.0)
