"""Pass 34 (lead): a glob pattern as a data file says how to pass several files."""

import json

import pytest

from hf_ext.data.loading import load_data_file, load_text_datasets


def _jsonl_folder(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for k in range(2):
        rows = [{"text": f"shard {k} document {i}"} for i in range(10)]
        (folder / f"part{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_glob_train_file_names_the_folder_form_and_that_form_reads_every_file(tmp_path):
    folder = _jsonl_folder(tmp_path)
    with pytest.raises(
        ValueError, match=r"--train_file=.*does not exist.*A glob pattern is not expanded.*--dataset_name"
    ):
        load_text_datasets(train_file=str(folder / "*.jsonl"))
    with pytest.raises(ValueError, match=r"A glob pattern is not expanded"):
        load_data_file(str(folder / "part?.jsonl"), flag="--validation_file")
    # the hint's form works: every file of the folder is read
    train, validation = load_text_datasets(dataset_name=str(folder), validation_fraction=0.1)
    assert len(train) + len(validation) == 20


def test_a_plain_missing_file_has_no_glob_hint(tmp_path):
    with pytest.raises(ValueError, match="does not exist") as err:
        load_text_datasets(train_file=str(tmp_path / "nope.jsonl"))
    assert "glob" not in str(err.value)
