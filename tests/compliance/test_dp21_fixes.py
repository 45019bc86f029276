"""Pass-21 audit (dp21) of the compliance recipe's data loading. `--train_file` reached `datasets` with its raw
extension as the builder name: `docs.txt` and `DOCS.JSONL` ended in "ConnectionError: Couldn't reach 'txt' (or
'JSONL') on the Hub", after `--output_dir` was created. The file is now read by the shared `load_data_file` (the
extension in any letter case; a malformed file is a ValueError naming --train_file), and a `.txt` file, which cannot
hold the URL each document is checked by, is refused up front, before anything is written. A `--split` that the
`--dataset_name` folder does not have is a ValueError naming --split (a saved DatasetDict gave a bare KeyError)."""

from __future__ import annotations

import json

import pytest

from hf_ext.recipes.compliance import main

_ROWS = [
    {"text": "alpha beta gamma", "url": "https://a.example/one"},
    {"text": "delta epsilon", "url": "https://b.example/two"},
]


def _jsonl(path):
    path.write_text("".join(json.dumps(row) + "\n" for row in _ROWS))
    return str(path)


def test_a_txt_train_file_is_refused_up_front_naming_the_flag_and_the_url_column(tmp_path):
    docs = tmp_path / "docs.txt"
    docs.write_text("hello world\n\nsecond doc\n")
    out = tmp_path / "never"
    with pytest.raises(
        ValueError,
        match=r"^--train_file='.*docs.txt' is a .txt file, which holds no URLs; the compliance recipe checks each "
        r"document's URL \(--url_column 'link'\): pass a .json/.jsonl, .csv or .parquet file with that column\.$",
    ):
        main(["--train_file", str(docs), "--url_column", "link", "--output_dir", str(out)])
    assert not out.exists()


def test_an_upper_case_extension_is_read_by_its_builder(tmp_path, small_tokenizer):
    small_tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "out"
    result = main(
        ["--train_file", _jsonl(tmp_path / "DOCS.JSONL"), "--tokenizer_name", str(tmp_path / "tok")]
        + ["--output_dir", str(out)]
    )
    assert result["overall"]["docs"] == len(_ROWS)
    assert (out / "retention_stats.json").is_file()


def test_a_malformed_train_file_names_the_flag_and_keeps_earlier_results(tmp_path):
    bad = tmp_path / "docs.csv"
    bad.write_text("text,url\nfirst,https://a.example/x\nsecond, with a comma,https://b.example/y\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "retention_stats.json").write_text("{}")  # an earlier run's result
    with pytest.raises(ValueError, match=r"^--train_file='.*docs.csv' could not be read as CSV \(ParserError: .*"):
        main(["--train_file", str(bad), "--output_dir", str(out)])
    assert (out / "retention_stats.json").read_text() == "{}"


def test_a_split_the_saved_dataset_does_not_have_is_named(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict(train=datasets.Dataset.from_list(_ROWS)).save_to_disk(str(folder))
    out = tmp_path / "never"
    with pytest.raises(
        ValueError, match=r"^--split='validation' is not a split of --dataset_name='.*saved' \(splits: "
    ):
        main(["--dataset_name", str(folder), "--split", "validation", "--output_dir", str(out)])
    files = tmp_path / "files"
    files.mkdir()
    _jsonl(files / "train.jsonl")
    with pytest.raises(ValueError, match=r"^--split='validation' is not a split of --dataset_name='.*files': Unknown"):
        main(["--dataset_name", str(files), "--split", "validation", "--output_dir", str(out)])
