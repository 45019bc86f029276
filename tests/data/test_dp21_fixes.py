"""Pass-21 audit (dp21) of data loading. A data file that does not parse (a CSV text cell with an unquoted comma, a
JSON Lines line that is not an object, a truncated Parquet file, bytes that are not UTF-8) ended in `datasets`'
`DatasetGenerationError` ("An error occurred while generating the dataset") or pyarrow's error, naming neither the
flag nor the file; it is now a `ValueError` naming both and the parser's message, the parser's error chained (an empty
`.jsonl` used to end in a bare `StopIteration`)."""

from __future__ import annotations

import json

import pytest

from hf_ext.data import load_text_datasets
from hf_ext.data.loading import load_data_file

_DOCS = [f"document number {i}" for i in range(10)]


def _parquet(path, truncate: bool):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": _DOCS}), path)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


# name, content, what the message says of the format, a word of the parser's message
_MALFORMED = [
    (
        "docs.csv",
        "text\nfirst document\nsecond document, with a comma\nthird\n",
        "as CSV",
        "Expected 1 fields in line 3",
    ),
    ("docs.CSV", 'text\n"unterminated\nfoo\n', "as CSV", "EOF inside string"),
    ("docs.jsonl", '{"text": "a"}\n{"text": "b"\n{"text": "c"}\n', "as JSON / JSON Lines", "JSON parse error"),
    ("docs.json", '[{"text": "a"}, {"text": ', "as JSON / JSON Lines", "ValueError"),
    ("docs.txt", b"\xff\xfe not utf-8\n\nsecond\n", "as text", "UnicodeDecodeError"),
    ("docs.parquet", None, "as Parquet", "Parquet magic bytes not found"),
]


def _write(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        _parquet(path, truncate=True)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("name, content, fmt, cause", _MALFORMED)
@pytest.mark.parametrize("flag", ["--train_file", "--validation_file"])
def test_a_malformed_data_file_is_a_value_error_naming_the_flag_the_path_and_the_cause(
    tmp_path, name, content, fmt, cause, flag
):
    bad = _write(tmp_path, name, content)
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": t}) + "\n" for t in _DOCS))
    kwargs = (
        {"train_file": str(bad)} if flag == "--train_file" else {"train_file": str(good), "validation_file": str(bad)}
    )
    with pytest.raises(ValueError, match=f"could not be read {fmt}") as info:
        load_text_datasets(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{flag}={str(bad)!r} could not be read {fmt} ("), message
    assert cause in message
    assert info.value.__cause__ is not None  # the parser's error (or datasets' around it) is kept


def test_the_csv_message_says_how_to_fix_the_file(tmp_path):
    bad = _write(tmp_path, *_MALFORMED[0][:2])
    with pytest.raises(ValueError, match=r"quote text cells that hold commas"):
        load_text_datasets(train_file=str(bad))


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.parquet", "empty.txt"])
def test_an_empty_data_file_is_refused_by_name(tmp_path, name):
    """An empty .jsonl ended in a bare StopIteration, an empty .csv in a DatasetGenerationError."""
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(
        ValueError, match=rf"^--train_file='.*{name}' is empty; pass a file with at least one document"
    ):
        load_text_datasets(train_file=str(tmp_path / name))


def test_load_data_file_reads_upper_case_extensions_and_names_the_file_without_a_flag(tmp_path):
    upper = tmp_path / "DOCS.JSONL"
    upper.write_text("".join(json.dumps({"text": t}) + "\n" for t in _DOCS))
    assert load_data_file(str(upper))["text"] == _DOCS
    bad = _write(tmp_path, *_MALFORMED[0][:2])
    with pytest.raises(ValueError, match=r"^The data file '.*docs.csv' could not be read as CSV"):
        load_data_file(str(bad))
    with pytest.raises(ValueError, match=r"^--target_files='.*docs.tsv' has an unsupported extension"):
        load_data_file(str(tmp_path / "docs.tsv"), flag="--target_files")


def test_a_folder_of_malformed_data_files_names_dataset_name(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.csv").write_text(_MALFORMED[0][1])
    with pytest.raises(ValueError, match=r"^--dataset_name='.*data' could not be read \(ParserError: .*Expected 1"):
        load_text_datasets(dataset_name=str(folder))
