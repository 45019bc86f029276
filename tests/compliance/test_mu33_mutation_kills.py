"""Mutation kills (mu33) for the rv33 store changes: a folder snapshot is still saved into an existing folder (only a
file format is refused over one), and a hive-partitioned `.parquet` dataset folder (part files in subfolders) loads as
Parquet like a flat one."""

from hf_ext.compliance.store import RobotsTxtStore


def _store():
    store = RobotsTxtStore()
    store.add("a.com", "User-agent: *\nDisallow: /x\n", "2026-01-01", 200)
    store.add("b.com", None, "2026-01-01", 404)
    return store


def test_a_folder_snapshot_is_saved_into_an_existing_folder(tmp_path):
    (tmp_path / "snap").mkdir()
    _store().save(tmp_path / "snap", format="folder")
    loaded = RobotsTxtStore.load(tmp_path / "snap")
    assert sorted(loaded) == ["a.com", "b.com"] and loaded["b.com"].status == 404


def test_a_partitioned_parquet_dataset_folder_loads_as_parquet(tmp_path):
    import pyarrow.parquet as pq

    _store().save(tmp_path / "one.parquet")
    pq.write_to_dataset(
        pq.read_table(tmp_path / "one.parquet"), tmp_path / "robots.parquet", partition_cols=["fetched_at"]
    )
    assert not list((tmp_path / "robots.parquet").glob("*.parquet"))  # part files in fetched_at=... subfolders only
    loaded = RobotsTxtStore.load(tmp_path / "robots.parquet")
    assert sorted(loaded) == ["a.com", "b.com"]
    assert loaded.get_text("a.com") == "User-agent: *\nDisallow: /x\n" and loaded["b.com"].status == 404
