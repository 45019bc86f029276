"""rv33 audit fixes."""

from hf_ext.compliance.store import RobotsTxtStore


def test_a_parquet_dataset_folder_named_parquet_loads_as_parquet(tmp_path):
    """F2: a `.parquet` folder of part files (as Spark, Dask or `pyarrow.parquet.write_to_dataset` write a Parquet
    file) loaded before pass 32 (pyarrow reads the folder as one table); since rv32 F1 read every existing folder as a
    folder snapshot, it was refused as holding no <host>.txt files. A folder snapshot named `.parquet` stays a folder
    (tests/compliance/test_rv32_fixes.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "host": ["a.com", "b.com"],
            "robots_txt": ["User-agent: *\nDisallow: /x\n", None],
            "fetched_at": ["2026-01-01", "2026-01-01"],
            "status": [200, 404],
            "error": [None, None],
        }
    )
    pq.write_to_dataset(table, tmp_path / "robots.parquet")
    loaded = RobotsTxtStore.load(tmp_path / "robots.parquet")
    assert sorted(loaded) == ["a.com", "b.com"]
    assert loaded.get_text("a.com") == "User-agent: *\nDisallow: /x\n" and loaded["b.com"].status == 404


def test_saving_a_file_format_over_a_folder_is_refused_by_name(tmp_path):
    """F2: saving over such a folder (now read as Parquet) failed with a raw IsADirectoryError from the rename."""
    import pyarrow.parquet as pq
    import pytest

    store = RobotsTxtStore()
    store.add("a.com", "User-agent: *\nDisallow: /x\n", "2026-01-01", 200)
    store.save(tmp_path / "one.parquet")
    pq.write_to_dataset(pq.read_table(tmp_path / "one.parquet"), tmp_path / "robots.parquet")
    with pytest.raises(ValueError, match="robots.parquet' is a folder; a parquet snapshot is written as one file"):
        store.save(tmp_path / "robots.parquet")
    with pytest.raises(ValueError, match="is a folder; a jsonl snapshot"):
        store.save(tmp_path / "robots.parquet", format="jsonl")
