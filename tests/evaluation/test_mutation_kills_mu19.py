"""Mutation run 19 (evaluation): the packaged tasks' `domains` metadata, as `parse_domains` documents it.

- `"a,b"` names the same domains as `"a+b"` (and as a list), and restricts the loaders' test items the same way.
- `None` or an empty value (`""`, only separators, an empty list) means all items: `parse_domains` gives `None` and the
  loaders keep the whole test split.
"""

import pytest

from hf_ext.evaluation.tasks.utils import known_domains, load_cloze, load_domain, parse_domains


def test_comma_and_plus_separated_domains_are_the_same():
    a, b = known_domains()[3], known_domains()[0]
    assert parse_domains(f"{a},{b}") == parse_domains(f"{a}+{b}") == parse_domains([a, b]) == sorted([a, b])
    assert parse_domains(f" {a} , {b} ") == sorted([a, b])
    for load in (load_domain, load_cloze):
        comma, plus = load(domains=f"{a},{b}")["test"], load(domains=f"{a}+{b}")["test"]
        assert 0 < len(comma) < len(load()["test"])
        assert comma.to_list() == plus.to_list()


@pytest.mark.parametrize("empty", [None, "", " + ", ",", [], ()])
def test_an_empty_domains_value_means_all_items(empty):
    assert parse_domains(empty) is None
    for load in (load_domain, load_cloze):
        assert load(domains=empty)["test"].to_list() == load()["test"].to_list()
