"""Audit pass 35 (cd41): a JSON Lines / Parquet snapshot with a bad record or a byte that is not UTF-8 is refused
naming the file, the line or record (and, in the recipe, `--robots`); a byte order mark in front of a JSONL snapshot
is skipped."""

import json

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore


def test_a_jsonl_snapshot_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "snap.jsonl"
    good = json.dumps({"host": "a.com", "robots_txt": "User-agent: *\nDisallow: /x\n"})
    # a hand-made export in Latin-1: "café" as the single byte 0xE9 on line 2
    path.write_bytes(good.encode() + b'\n{"host": "b.com", "robots_txt": "Disallow: /caf\xe9/"}\n')
    with pytest.raises(ValueError, match=r"snap\.jsonl:2 is not UTF-8 \(byte 0xe9 at character 48\)"):
        RobotsTxtStore.load(path)


def test_a_jsonl_snapshot_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "snap.jsonl"
    rows = [{"host": "a.com", "robots_txt": "User-agent: *\nDisallow: /x\n"}, {"host": "b.com", "robots_txt": None}]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    store = RobotsTxtStore.load(path)
    assert sorted(store) == ["a.com", "b.com"]
    assert RobotsCompliance(store).disallowed_agents("https://a.com/x/1")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("robots_txt", 5, TypeError, r"robots\.txt text must be str, bytes or None, got int"),
        ("status", "503", TypeError, r"status of 'b\.com' must be an int HTTP status"),
        ("fetched_at", 5, TypeError, r"fetched_at of 'b\.com' must be an ISO date string"),
    ],
)
def test_a_bad_field_of_a_snapshot_record_names_the_file_and_record(tmp_path, fmt, field, value, error, message):
    path = tmp_path / f"snap.{fmt}"
    rows = [{"host": "a.com", "robots_txt": None}, {"host": "b.com", "robots_txt": "x"}]  # a column of one type
    rows[1][field] = value
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {k: [r.get(k) for r in rows] for k in rows[1]}
        pq.write_table(pa.table(columns), path)
    with pytest.raises(error, match=rf"snap\.{fmt}: record 1: {message}"):
        RobotsTxtStore.load(path)


def test_compliance_recipe_names_robots_for_a_bad_snapshot_record(tmp_path):
    from hf_ext.recipes.compliance import main

    path = tmp_path / "snap.jsonl"
    path.write_text(json.dumps({"host": "a.com", "robots_txt": 5}) + "\n")
    with pytest.raises(TypeError, match=r"^--robots: .*snap\.jsonl: record 0: robots\.txt text must be str"):
        main(["--robots", str(path), "--output_dir", str(tmp_path / "out")])


def test_retention_stats_refuse_a_row_without_a_compliance_decision():
    import datasets

    from hf_ext.compliance import compute_retention_stats

    features = datasets.Features(
        {
            "url": datasets.Value("string"),
            "text": datasets.Value("string"),
            "robots_compliant": datasets.Value("bool"),
            "disallowed_user_agents": datasets.List(datasets.Value("string")),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "url": ["https://a.com/1", "https://a.com/2", "https://a.com/3"],
            "text": ["a b", "c d", "e f"],
            "robots_compliant": [True, None, True],  # the second row was never decided (it counted as removed)
            "disallowed_user_agents": [[], None, []],
        },
        features=features,
    )
    with pytest.raises(ValueError, match=r"compliant_column='robots_compliant' has 1 missing \(null\) decision"):
        compute_retention_stats(ds)
    # the decided rows alone are counted as before
    stats = compute_retention_stats(ds.select([0, 2]))
    assert (stats.overall["docs"], stats.overall["docs_removed"]) == (2, 0)
