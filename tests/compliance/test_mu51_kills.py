"""Mutation-kill tests (audit pass 41, mu51) for hf_ext/compliance/stats.py."""


def test_retention_rows_are_sorted_by_removed_tokens_descending_then_domain():
    """`per_domain` is "sorted by removed tokens (descending)", ties by domain name, whatever the row order."""
    import datasets

    from hf_ext.compliance import compute_retention_stats

    ds = datasets.Dataset.from_dict(
        {
            "url": ["https://e.org/1", "https://b.org/1", "https://a.org/1", "https://c.org/1", "https://d.org/1"],
            "text": ["w w w", "w w w w", "w", "w w w", "w w"],
            "robots_compliant": [False, False, False, False, True],
        }
    )
    stats = compute_retention_stats(ds, agents_column=None)
    rows = [(r["domain"], r["tokens_removed"]) for r in stats.per_domain]
    assert rows == [("b.org", 4), ("c.org", 3), ("e.org", 3), ("a.org", 1), ("d.org", 0)]
