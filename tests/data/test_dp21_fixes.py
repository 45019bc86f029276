"""Pass-21 audit (dp21) of data loading. A data file that does not parse (a CSV text cell with an unquoted comma, a
JSON Lines line that is not an object, a truncated Parquet file, bytes that are not UTF-8) ended in `datasets`'
`DatasetGenerationError` ("An error occurred while generating the dataset") or pyarrow's error, naming neither the
flag nor the file; it is now a `ValueError` naming both and the parser's message, the parser's error chained (an empty
`.jsonl` used to end in a bare `StopIteration`). A `--dataset_name` that is a local path but no folder (a typo in
`./data`) was reported as "needs the Hugging Face Hub" with HF_HUB_OFFLINE set (and, online, went to the Hub); it is
now "does not exist as a folder", in `load_text_datasets` and in the recipes' argument checks. A string
`validation_fraction` gave a raw `TypeError: '<' not supported`; it names the argument."""

from __future__ import annotations

import json
import re

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


@pytest.mark.parametrize("offline", [True, False])
@pytest.mark.parametrize("relative", ["./no_such_dir", "../no_such_dir", "~/no_such_dir_hf_ext", "a/b/c", "ab\\cd"])
def test_a_local_path_that_is_no_folder_is_not_called_a_hub_name(tmp_path, monkeypatch, offline, relative):
    """Offline it was "needs the Hugging Face Hub"; online it went to the Hub (an HFValidationError at best)."""
    import datasets

    monkeypatch.chdir(tmp_path)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(
        ValueError, match=r"is a local path .* that does not exist as a folder; check the path"
    ) as info:
        load_text_datasets(dataset_name=relative)
    assert "Hugging Face Hub" not in str(info.value)
    absolute = str(tmp_path / "nope_dir")
    with pytest.raises(ValueError, match=rf"^--dataset_name={absolute!r} is a local path"):
        load_text_datasets(dataset_name=absolute)


def test_a_file_as_dataset_name_points_to_train_file(tmp_path, monkeypatch):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in _DOCS))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError, match=r"^--dataset_name='data.jsonl' is a file, not a dataset folder; pass .*--train_file"
    ):
        load_text_datasets(dataset_name="data.jsonl")


def test_a_hub_name_offline_still_needs_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ValueError, match=r"'someone/some_dataset' needs the Hugging Face Hub.*embedded offline corpus"
    ):
        load_text_datasets(dataset_name="someone/some_dataset")


@pytest.mark.parametrize("value", ["0.5", None, [0.5]])
def test_a_validation_fraction_that_is_no_number_is_named(tmp_path, value):
    with pytest.raises(
        TypeError, match=r"^validation_fraction must be a number in \(0, 1\), got " + re.escape(repr(value))
    ):
        load_text_datasets(validation_fraction=value)
    assert len(load_text_datasets(validation_fraction=0.5)[1]) > 0  # a number still works


_LP = [
    "--num_hidden_layers", "4", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
    "--num_key_value_heads", "1", "--block_size", "32", "--vocab_size", "512", "--pretrain_steps", "5",
    "--skip_sweep", "true", "--lp_start", "2", "--lp_end", "4", "--use_cpu", "true", "--report_to", "none",
]  # fmt: skip


@pytest.mark.parametrize("recipe", ["pretrain", "layer_parallel", "grape", "compliance"])
def test_the_recipes_refuse_a_local_path_that_is_no_folder_before_any_output(tmp_path, recipe):
    import importlib

    main = importlib.import_module(f"hf_ext.recipes.{recipe}").main
    argv = {"layer_parallel": _LP, "grape": ["--use_cpu", "true", "--report_to", "none"]}.get(recipe, [])
    out = tmp_path / "never"
    missing = str(tmp_path / "corpus_typo")
    with pytest.raises(
        ValueError, match=rf"^--dataset_name={missing!r} is a local path .* does not exist as a folder"
    ):
        main([*argv, "--dataset_name", missing, "--output_dir", str(out)])
    assert not out.exists()
