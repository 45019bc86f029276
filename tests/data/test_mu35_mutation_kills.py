"""mu35 mutation run: pins for the da35 data-loading changes."""

import pytest

from hf_ext.data import load_text_datasets
from hf_ext.data.loading import load_dataset_or_folder


def test_dataset_name_folder_of_txt_files_drops_a_byte_order_mark(tmp_path):
    """A --dataset_name folder of .txt files is read as a .txt --train_file is: a UTF-8 byte-order mark is no text."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.txt").write_bytes(("\ufeff" + "".join(f"doc {i}\n\n" for i in range(20))).encode())
    train, val = load_text_datasets(dataset_name=str(folder))
    docs = list(train["text"]) + list(val["text"])
    assert sorted(docs) == sorted(f"doc {i}" for i in range(20))
    assert not any("\ufeff" in doc for doc in docs)


def test_a_dataset_folder_split_without_rows_is_named(tmp_path):
    """The refusal of a data folder that holds no row names the split that was asked for."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.csv").write_text("text\n")
    with pytest.raises(ValueError, match=r"--dataset_name=.*folder' holds no row in its 'train' split \(e\.g\. CSV"):
        load_dataset_or_folder(str(folder), split="train")
    with pytest.raises(ValueError, match=r"folder' holds no row \(e\.g\. CSV"):
        load_dataset_or_folder(str(folder))


def test_another_read_value_error_is_not_called_an_empty_file(tmp_path, monkeypatch):
    """Only datasets' 'corresponds to no data' is reworded as a file without rows; any other ValueError of the reader
    propagates as it is (it is not a file without documents)."""
    import datasets

    from hf_ext.data.loading import load_data_file

    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\n')

    def fail(*args, **kwargs):
        raise ValueError("some other reader problem")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(ValueError, match="^some other reader problem$"):
        load_data_file(str(path), flag="--train_file")
