"""Mutation-testing kills (mu41) for the pass-35 data loading changes."""

from __future__ import annotations

import json

from hf_ext.data.loading import load_text_datasets


def test_a_validation_file_with_a_seed_is_not_refused_for_the_datasets_own_split(tmp_path):
    """`validation_file` is the validation data whatever the dataset holds, so the dataset's own split is not in
    use: the refusal of a seed that split makes unused does not apply (the recipes refuse that flag pair by their own
    check, naming --validation_file)."""
    folder = tmp_path / "d"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": f"{split} {i}"}) + "\n" for i in range(5)))
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"text": f"extra {i}"}) + "\n" for i in range(3)))
    train, valid = load_text_datasets(dataset_name=str(folder), validation_file=str(extra), seed=3)
    assert len(train) == 5 and sorted(valid["text"]) == ["extra 0", "extra 1", "extra 2"]


def test_validation_split_seed_1_with_the_datasets_own_split_is_refused(tmp_path):
    """Every seed other than 0 is ignored with a dataset's own split, 1 included."""
    import pytest

    folder = tmp_path / "d"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": f"{split} {i}"}) + "\n" for i in range(5)))
    with pytest.raises(ValueError, match=r"--validation_split_seed 1 is ignored: .* its own 'test' split"):
        load_text_datasets(dataset_name=str(folder), seed=1)
