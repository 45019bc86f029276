"""Compliance: `compute_retention_stats` reads the stored columns whatever the dataset's format, and
`record_from_response` refuses a status that is not an int by name.

* `ds.set_format(columns=["url", "text"])` hides the other columns from `ds[name]`: the stats used to fail with a raw
  `KeyError: 'robots_compliant'` (or `'disallowed_user_agents'`), although `column_names` lists them and the data is
  there; a numpy format handed back arrays. They are now read from the unformatted dataset (the caller's format is
  left as it was).
* `record_from_response("a.com", "200", body, date)` raised `TypeError: '<=' not supported between instances of 'int'
  and 'str'`; a float 200.0 or a bool gave a record that `RobotsTxtStore.add` refuses later. The fetcher passes
  `http.client`'s int status and `HTTPError.code`; another type is now refused naming `status`, as `add` does.
"""

from __future__ import annotations

import numpy as np
import pytest


def _annotated():
    import datasets

    return datasets.Dataset.from_dict(
        {
            "url": ["https://a.com/x", "https://b.com/y", "https://b.com/z"],
            "text": ["a b", "c d e", "f"],
            "robots_compliant": [True, False, True],
            "disallowed_user_agents": [[], ["GPTBot"], []],
        }
    )


@pytest.mark.parametrize(
    "fmt",
    [
        {"columns": ["url", "text"]},
        {"columns": ["url", "text", "robots_compliant"]},
        {"type": "numpy"},
        {"type": "numpy", "columns": ["text"], "output_all_columns": False},
    ],
)
def test_retention_stats_ignore_the_dataset_format(fmt):
    from hf_ext.compliance.stats import compute_retention_stats

    ref = compute_retention_stats(_annotated())
    ds = _annotated()
    ds.set_format(**fmt)
    before = ds.format
    got = compute_retention_stats(ds)
    assert got.per_domain == ref.per_domain and got.overall == ref.overall and got.per_agent == ref.per_agent
    assert got.overall["docs_removed"] == 1 and got.overall["tokens_removed"] == 3 and got.per_agent == {"GPTBot": 1}
    assert ds.format == before  # the caller's dataset keeps its format


def test_retention_stats_with_a_hidden_token_column():
    from hf_ext.compliance.stats import compute_retention_stats

    ds = _annotated().add_column("n", [2, 30, 1])
    ds.set_format(columns=["url"])
    stats = compute_retention_stats(ds, token_column="n", agents_column=None)
    assert stats.overall["tokens"] == 33 and stats.overall["tokens_removed"] == 30


@pytest.mark.parametrize("status", ["200", 200.0, True, "404"])
def test_record_from_response_refuses_a_status_that_is_not_an_int(status):
    from hf_ext.compliance.store import record_from_response

    with pytest.raises(TypeError, match=r"status of 'a\.com' must be an int HTTP status or None, got "):
        record_from_response("a.com", status, b"User-agent: *\nDisallow: /\n", "2025-01-01")


def test_record_from_response_keeps_int_statuses():
    from hf_ext.compliance.store import RobotsTxtStore, record_from_response

    record = record_from_response("a.com", np.int64(200), b"User-agent: *\nDisallow: /\n", "2025-01-01")
    assert record.status == 200 and type(record.status) is int and record.status_class == "available"
    store = RobotsTxtStore()
    store.update_from_fetch(record)
    assert store.get("a.com").status == 200
    assert record_from_response("a.com", 404, None, "2025-01-01").status_class == "unavailable"
    assert record_from_response("a.com", None, None, "2025-01-01").error == "no response"
