"""`load_text_datasets`: where the training and validation text come from, and its errors on bad files."""

import json

import pytest

from hf_ext.data import load_text_datasets


def _jsonl(path, texts, key="text"):
    path.write_text("\n".join(json.dumps({key: t}) for t in texts) + "\n")
    return str(path)


def test_validation_file_is_used_whatever_the_training_data(tmp_path):
    valid = tmp_path / "valid.txt"
    valid.write_text("my own validation line\nanother one\n")
    # embedded corpus for training, the user's file for validation (it used to be ignored silently)
    train, val = load_text_datasets(validation_file=str(valid))
    assert val["text"] == ["my own validation line", "another one"] and len(train) > 100
    # the two files may have different formats: each is read with the builder of its own extension
    train_file = _jsonl(tmp_path / "train.jsonl", [f"doc {i}" for i in range(10)])
    train, val = load_text_datasets(train_file=train_file, validation_file=str(valid))
    assert train["text"] == [f"doc {i}" for i in range(10)] and val["text"] == ["my own validation line", "another one"]


def test_bad_validation_and_tiny_training_files_name_the_flag(tmp_path):
    train_file = _jsonl(tmp_path / "train.jsonl", [f"doc {i}" for i in range(10)])
    other = _jsonl(tmp_path / "valid.jsonl", ["x", "y"], key="content")
    with pytest.raises(ValueError, match="validation data has no column 'text'"):
        load_text_datasets(train_file=train_file, validation_file=other)
    bad_ext = tmp_path / "valid.xml"
    bad_ext.write_text("<a/>")
    with pytest.raises(ValueError, match="--validation_file.*extension"):
        load_text_datasets(train_file=train_file, validation_file=str(bad_ext))
    one = tmp_path / "one.txt"
    one.write_text("a single line\n")
    with pytest.raises(ValueError, match="--validation_file"):
        load_text_datasets(train_file=str(one))
    train, val = load_text_datasets(train_file=str(one), validation_file=str(one))
    assert len(train) == len(val) == 1
