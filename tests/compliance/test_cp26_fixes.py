"""Audit cp26: a DCG over losses and HF Trainer metrics files, agent names that are not a product token, and empty
robots.txt snapshots."""

from __future__ import annotations

import json

import pytest

from hf_ext.compliance import RobotsTxtStore
from hf_ext.recipes.compliance import main

ROBOTS = "User-agent: GPTBot\nDisallow: /\n\nUser-agent: Mozilla\nAllow: /\n"
FULL_UA = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)"


def _retention_args(tmp_path):
    docs = tmp_path / "docs.jsonl"  # two documents and a small tokenizer keep the retention part fast
    docs.write_text("".join(json.dumps({"url": f"https://example.org/{i}", "text": "a b c"}) + "\n" for i in (1, 2)))
    return ["--train_file", str(docs), "--vocab_size", "300"]


# --- F3: empty snapshots --------------------------------------------------------------------------------------------
def _empty_snapshot(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n")
    else:
        RobotsTxtStore().save(path)  # a 0-row Parquet file with the columns, or a folder with a manifest only
    return path


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.parquet", "empty_folder"])
def test_an_empty_snapshot_is_refused_in_every_format(tmp_path, name):
    """An empty .jsonl or .parquet loaded as 0 hosts (the recipe then removed nothing, rc 0), while an empty folder
    was refused."""
    path = _empty_snapshot(tmp_path, name)
    with pytest.raises(ValueError, match=r"holds no robots\.txt records \(0 hosts\).*allow_empty=True"):
        RobotsTxtStore.load(path)
    assert len(RobotsTxtStore.load(path, allow_empty=True)) == 0
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--robots: robots\.txt snapshot .* holds no robots\.txt records"):
        main(["--robots", str(path), *_retention_args(tmp_path), "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.parquet", "empty_folder"])
def test_datatrove_filter_refuses_an_empty_snapshot_at_construction(tmp_path, name):
    pytest.importorskip("datatrove")
    from hf_ext.compliance import RobotsTxtFilter

    path = _empty_snapshot(tmp_path, name)
    with pytest.raises(ValueError, match=r"holds no robots\.txt records \(0 hosts\)"):
        RobotsTxtFilter(str(path))
    RobotsTxtStore.from_dict({"a.com": ROBOTS}).save(path)
    assert len(RobotsTxtFilter(str(path)).checker.store) == 1
