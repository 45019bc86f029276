"""Pass-34 mutation run (mu39): pins for `_glob_hint`."""

import pytest

from hf_ext.data.loading import load_data_file, load_text_datasets


def test_a_bracket_glob_gets_the_hint(tmp_path):
    with pytest.raises(ValueError, match="A glob pattern is not expanded"):
        load_text_datasets(train_file=str(tmp_path / "part[01].jsonl"))


def test_pattern_characters_in_the_folder_part_only_give_no_hint(tmp_path):
    folder = tmp_path / "run[1]*"
    folder.mkdir()
    with pytest.raises(ValueError, match="does not exist") as err:
        load_data_file(str(folder / "missing.jsonl"), flag="--validation_file")
    assert "A glob pattern" not in str(err.value)
