"""rv32 audit fixes."""

import pytest

from hf_ext.compliance.store import RobotsTxtStore


@pytest.mark.parametrize("name", ["robots.JSONL", "robots.Parquet", "robots.jsonl"])
def test_a_folder_snapshot_named_like_a_file_format_loads_as_a_folder(tmp_path, name):
    """F1: since the extension is read in any letter case (cp31 F3), a folder snapshot named `robots.JSONL` or
    `robots.Parquet` (loaded as a folder before) was read as a JSON Lines / Parquet file and failed with a raw
    IsADirectoryError / ArrowInvalid. An existing folder is a folder snapshot whatever its name."""
    store = RobotsTxtStore()
    store.add("a.com", "User-agent: *\nDisallow: /x\n", "2026-01-01", 200)
    store.add("b.com", None, "2026-01-01", 404)
    path = tmp_path / name
    store.save(path, format="folder")
    loaded = RobotsTxtStore.load(path)
    assert sorted(loaded) == ["a.com", "b.com"]
    assert loaded.get_text("a.com") == store.get_text("a.com") and loaded["b.com"].status == 404
