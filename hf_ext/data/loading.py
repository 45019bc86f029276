"""Load the text data a recipe trains on: the embedded corpus by default, a hub dataset or local files on request."""

from __future__ import annotations

import os
import re


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (`HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE`)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    return False


def check_dataset_config(dataset_name: str | None, dataset_config_name: str | None) -> None:
    """Refuse `--dataset_config_name` without `--dataset_name` (it would be silently ignored: the embedded corpus or
    `--train_file` would be used instead); raise `ValueError` naming the flag. Shared by the recipes' checks."""
    if dataset_config_name and not dataset_name:
        raise ValueError(
            f"--dataset_config_name={dataset_config_name!r} selects a config of --dataset_name, which is not set; "
            "drop it or pass --dataset_name."
        )


def is_saved_dataset_folder(path: str | None) -> bool:
    """True for a folder written by `datasets`' `save_to_disk` (a `Dataset`'s `state.json` or a `DatasetDict`'s
    `dataset_dict.json`), which `load_from_disk` reads and `load_dataset` refuses."""
    return bool(path) and os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("dataset_dict.json", "state.json")
    )


# a Hub dataset id: `name` or `owner/name` (letters, digits, `_`, `-`, `.`)
_HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+")


def looks_like_local_path(name: str) -> bool:
    """True for a `--dataset_name` that can only be a filesystem path, never a Hub id: absolute, starting with `.` or
    `~` (`./data`, `../data`, `~/data`: a Hub name cannot start with `.` or `~`), holding the OS path separator
    where it is not `/`, or anything else that is not `name` / `owner/name` (`a/b/c`)."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or any(sep and sep != "/" and sep in name for sep in (os.sep, os.altsep))
        or _HUB_ID.fullmatch(name) is None
    )


def check_dataset_name(dataset_name: str | None, offline_fix: str, flag: str = "--dataset_name") -> None:
    """Refuse a `--dataset_name` that cannot load, before any work: a file (a data file is a `--train_file`), a local
    path that is not an existing folder (a typo in a path used to be reported as a Hub name), or, with
    `HF_HUB_OFFLINE` set, a Hub name; `offline_fix` says what the recipe takes instead. Shared by the recipes."""
    if not dataset_name or os.path.isdir(dataset_name):
        return
    if os.path.isfile(dataset_name):
        raise ValueError(
            f"{flag}={dataset_name!r} is a file, not a dataset folder; pass a data file with --train_file "
            f"({flag} takes a Hub dataset, a folder of data files or a save_to_disk folder)."
        )
    if looks_like_local_path(dataset_name):
        raise ValueError(
            f"{flag}={dataset_name!r} is a local path (not a Hub dataset id, `name` or `owner/name`) that does not "
            "exist as a folder; check the path"
            + (" (a '~' is not expanded here: write the path out)" if dataset_name.startswith("~") else "")
            + "."
        )
    if hub_offline():
        raise ValueError(
            f"{flag}={dataset_name!r} needs the Hugging Face Hub (there is no local folder of that name), but "
            f"HF_HUB_OFFLINE is set. {offline_fix}"
        )


def _read_error_types() -> tuple[type[BaseException], ...]:
    """The errors `datasets` raises for a data file it cannot parse: a `DatasetGenerationError` around the parser's
    (pandas', pyarrow's, a UnicodeDecodeError), pyarrow's own (a Parquet file without its footer) and `OSError`s (a
    Parquet file whose metadata does not decode, an unreadable file)."""
    import pyarrow as pa
    from datasets.exceptions import DatasetGenerationError

    return (DatasetGenerationError, pa.ArrowException, OSError)


def _read_error_cause(err: BaseException) -> str:
    """The parser's error behind `err` (a `DatasetGenerationError` only says that generating the dataset failed)."""
    from datasets.exceptions import DatasetGenerationError

    cause = err.__cause__ if isinstance(err, DatasetGenerationError) and err.__cause__ is not None else err
    text = " ".join(str(cause).split())  # pandas' message ends in a line break
    return f"{cause.__class__.__name__}: {text}" if text else cause.__class__.__name__


def load_dataset_or_folder(
    dataset_name: str,
    dataset_config_name: str | None = None,
    flag: str = "--dataset_name",
    split: str | None = None,
    split_flag: str = "--split",
):
    """`datasets.load_dataset(dataset_name, dataset_config_name, split=split)`, or `load_from_disk` for a
    `save_to_disk` folder (e.g. the compliance recipe's `compliant_dataset/`): a `DatasetDict` (its `split` when one is
    given), or the `Dataset` such a folder holds (whatever `split`).
    A dataset that cannot be reached or read, or has no such `split`, raises a `ValueError` naming `flag` (and
    `split_flag`), the cause chained."""
    if is_saved_dataset_folder(dataset_name):
        from datasets import load_from_disk

        if dataset_config_name:
            raise ValueError(
                f"{flag}={dataset_name!r} is a save_to_disk folder, which has no configs; drop --dataset_config_name."
            )
        try:
            loaded = load_from_disk(dataset_name)
        except (*_read_error_types(), ValueError, KeyError, TypeError) as err:
            # a folder whose `.arrow` file or JSON metadata is cut short or damaged: pyarrow's / json's bare error
            # named neither the flag nor the folder
            raise ValueError(
                f"{flag}={dataset_name!r} is a save_to_disk folder that could not be read ({_read_error_cause(err)}); "
                "save the dataset again (`save_to_disk`) or restore the folder."
            ) from err
        if split is None or not hasattr(loaded, "keys"):
            return loaded
        if split not in loaded:
            raise ValueError(
                f"{split_flag}={split!r} is not a split of {flag}={dataset_name!r} (splits: {list(loaded.keys())}); "
                "pass one of them."
            )
        return loaded[split]
    from datasets import load_dataset, load_dataset_builder

    try:
        if os.path.isdir(dataset_name) and load_dataset_builder(dataset_name, dataset_config_name).name == "text":
            # a local folder of .txt files is read as a .txt --train_file is (`load_data_file`): one document per
            # blank-line-separated paragraph, not datasets' one document per line (blank lines as empty documents)
            loaded = load_dataset(
                dataset_name, dataset_config_name, split=split, sample_by="document", encoding="utf-8-sig"
            )
            return _split_paragraphs(loaded)
        return load_dataset(dataset_name, dataset_config_name, split=split)
    except _read_error_types() as err:
        if isinstance(err, OSError) and not os.path.isdir(dataset_name):  # the Hub could not be reached
            raise ValueError(
                f"Could not load {flag}={dataset_name!r} ({err.__class__.__name__}: {err}). Without Hub access, drop "
                f"{flag} to use the embedded offline corpus or pass --train_file."
            ) from err
        # a local folder (or a Hub dataset) whose data files do not parse
        raise ValueError(
            f"{flag}={dataset_name!r} could not be read ({_read_error_cause(err)}); fix or remove the malformed data "
            "file."
        ) from err
    except ValueError as err:
        if "corresponds to no data" in str(err):  # `datasets`' words for a split whose data files hold no row
            raise ValueError(
                f"{flag}={dataset_name!r} holds no row{f' in its {split!r} split' if split else ''} (e.g. CSV files "
                "with only their header row, or .jsonl files of blank lines); pass data files with documents."
            ) from err
        if split is None or not str(err).startswith("Unknown split"):
            raise
        raise ValueError(f"{split_flag}={split!r} is not a split of {flag}={dataset_name!r}: {err}") from err


def load_text_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    text_column: str = "text",
    validation_fraction: float = 0.05,
    seed: int = 0,
    text_column_flag: str | None = "--text_column",
    validation_file_flag: str | None = "--validation_file",
):
    """Return `(train, validation)` `datasets.Dataset`s holding `text_column`.

    With neither `dataset_name` nor `train_file`, the embedded corpus (`hf_ext.data.load_corpus`) is used.
    `dataset_name` is a Hub dataset, a local folder of data files (a folder of .txt files is read one document per
    blank-line-separated paragraph, as a .txt `train_file`), or a `save_to_disk` folder (`DatasetDict`, or one
    `Dataset`: the training data).
    `validation_file`, when given, is the validation data whatever the training data is (each file is read with the
    `datasets` builder of its own extension); otherwise the corpus' held-out split, the dataset's `validation` (or
    `test`) split, or a `validation_fraction` split of the training data drawn with `seed` (a `seed` other than 0
    with a dataset that has its own split is refused: it would be ignored). The recipes pass their
    `--validation_split_seed` (default 0) here, not the training `--seed`, so runs that differ only in `--seed` are
    evaluated on the same documents.
    A `.txt` file is read by `load_data_file`: one document per blank-line-separated paragraph, line breaks kept.
    Errors name the argument at fault and are raised before any download or training; `text_column_flag` is the flag
    that names the text column (`None` for a recipe without one: the data then needs a `text_column` column), and
    `validation_file_flag` the one for separate validation data (`None`: the recipe has none to suggest).
    """
    from .corpus import load_corpus

    if dataset_name and train_file:
        raise ValueError("Pass either --dataset_name or --train_file, not both.")
    check_dataset_config(dataset_name, dataset_config_name)
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)):
        raise TypeError(
            f"validation_fraction must be a number in (0, 1), got {validation_fraction!r} "
            f"({type(validation_fraction).__name__}); pass e.g. 0.05."
        )
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(
            f"The validation split seed (--validation_split_seed) must be an integer in [0, 2**32), got {seed!r}."
        )
    for arg, path in (("--train_file", train_file), ("--validation_file", validation_file)):
        if path is not None:
            if not os.path.isfile(path):
                raise ValueError(
                    f"{arg}={path!r} does not exist; pass a .txt, .json/.jsonl, .csv or .parquet file.{_glob_hint(path)}"
                )
            if _file_builder(path) is None:
                raise ValueError(
                    f"{arg}={path!r} has an unsupported extension; use .txt, .json, .jsonl, .csv or .parquet."
                )
    if dataset_name is None and train_file is None:
        train, valid = load_corpus("train"), load_corpus("test")
    elif train_file is not None:
        # one builder per file: the two files may have different formats (e.g. .jsonl training, .txt validation)
        train = load_data_file(train_file, "train", flag="--train_file")
        valid = None
    else:
        check_dataset_name(
            dataset_name,
            "Drop --dataset_name to train on the embedded offline corpus, point it at a local dataset folder, or pass "
            "--train_file with a local file.",
        )
        raw = load_dataset_or_folder(dataset_name, dataset_config_name)
        if not hasattr(raw, "keys"):  # a save_to_disk folder of one Dataset: the training data
            train, valid = raw, None
        elif "train" not in raw:
            raise ValueError(
                f"--dataset_name={dataset_name!r} has no 'train' split (splits: {list(raw.keys())}); pass a dataset "
                "with one, or --train_file."
            )
        else:
            train = raw["train"]
            own = "validation" if "validation" in raw else ("test" if "test" in raw else None)
            valid = raw[own] if own else None
            if own and validation_file is None and seed != 0:  # no split is drawn: the seed would be ignored
                raise ValueError(
                    f"--validation_split_seed {seed} is ignored: --dataset_name={dataset_name!r} has its own {own!r} "
                    "split, which is the validation data (the seed draws a held-out split only from data without "
                    "one); drop it."
                )
    if validation_file is not None:  # the user's validation data wins over the corpus' or the dataset's own split
        valid = load_data_file(validation_file, "validation", flag="--validation_file")
    if text_column not in train.column_names:
        fix = (
            f"name the text column with {text_column_flag}"
            if text_column_flag
            else f"this recipe reads the text from a column named {text_column!r}: rename the file's text column"
        )
        raise ValueError(f"The training data has no column {text_column!r} (columns: {train.column_names}); {fix}.")
    if valid is not None and text_column not in valid.column_names:
        raise ValueError(
            f"The validation data has no column {text_column!r} (columns: {valid.column_names}); give it the same "
            f"text column as the training data{f' ({text_column_flag})' if text_column_flag else ''}."
        )
    if valid is None:
        if len(train) < 2:
            txt = train_file is not None and _file_builder(train_file) == "text"
            or_file = f" or a separate {validation_file_flag}" if validation_file_flag else ""
            raise ValueError(
                f"The training data has {len(train)} document(s): too few to hold out a validation split; pass more "
                f"documents{' (a .txt file separates them by blank lines)' if txt else ''}{or_file}."
            )
        parts = train.train_test_split(test_size=validation_fraction, seed=seed)
        train, valid = parts["train"], parts["test"]
    return train, valid


# the end of a line, then one or more lines that are empty or hold only spaces / tabs: a document boundary
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")


def load_data_file(path: str, split: str = "train", flag: str | None = None):
    """One local data file as a `datasets.Dataset`, read by the `datasets` builder of its extension (`_file_builder`:
    `.txt`, `.json`/`.jsonl`, `.csv` or `.parquet`, in any letter case).

    A `.txt` file holds one document per paragraph: its text (read whole by the `text` builder, `sample_by="document"`,
    line endings normalised) is split at blank lines, lines that are empty or hold only spaces or tabs, and the line
    breaks inside a document are kept. (Read line by line, every line used to be a document: the line breaks were
    lost, an EOS was packed after each line and the held-out split drew single lines out of the training documents.)
    A document's leading and trailing line breaks (the file's last newline) are removed, and documents holding only
    whitespace are dropped.
    A file that is missing, empty, of another extension or that does not parse (a CSV row with an unquoted comma,
    a JSON Lines line that is not one object, a truncated Parquet file, bytes that are not UTF-8) raises a
    `ValueError` naming `flag` (the recipe's flag, e.g. `--train_file`), the path and the parser's message, with the
    parser's error chained; so does one that parses but holds no row (a CSV header alone, a .jsonl of blank lines).
    A UTF-8 byte-order mark at the start of a `.txt` file is dropped (as the JSON and CSV readers drop it).
    """
    from datasets import load_dataset

    who = f"{flag}={path!r}" if flag else f"The data file {path!r}"
    builder = _file_builder(path)
    if builder is None:
        raise ValueError(f"{who} has an unsupported extension; use .txt, .json, .jsonl, .csv or .parquet.")
    if not os.path.isfile(path):
        raise ValueError(f"{who} does not exist; pass a .txt, .json/.jsonl, .csv or .parquet file.{_glob_hint(path)}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{who} is empty; pass a file with at least one document.")
    try:
        if builder != "text":
            return load_dataset(builder, data_files={split: path})[split]
        # utf-8-sig: a byte-order mark (Windows Notepad's "UTF-8 with BOM") is dropped, as the JSON and CSV readers
        # drop it, instead of becoming the first characters of the first document; plain UTF-8 reads the same
        ds = load_dataset("text", data_files={split: path}, sample_by="document", encoding="utf-8-sig")[split]
    except _read_error_types() as err:
        raise ValueError(
            f"{who} could not be read as {_FORMATS[builder]} ({_read_error_cause(err)}); {_READ_FIXES[builder]}."
        ) from err
    except ValueError as err:
        # `datasets` reads a file that parses but holds no row (a CSV header alone, a .jsonl of blank lines, an empty
        # JSON list) as a split of no data, and says only 'Instruction "train" corresponds to no data!'
        if "corresponds to no data" not in str(err):
            raise
        raise ValueError(
            f"{who} holds no {'row' if builder != 'text' else 'document'} (e.g. a CSV file with only its header row, "
            "or a .jsonl file of blank lines); pass a file with at least one document."
        ) from err
    return _split_paragraphs(ds)


def _paragraphs(batch):
    docs = (doc.strip("\n") for text in batch["text"] for doc in _BLANK_LINES.split(text))
    return {"text": [doc for doc in docs if doc.strip()]}


def _split_paragraphs(ds):
    """`ds` (a `Dataset` or `DatasetDict` of whole .txt files in a `text` column) with one row per paragraph: split at
    blank lines, line breaks inside a paragraph kept, a paragraph's leading and trailing line breaks removed and
    paragraphs of only whitespace dropped."""
    return ds.map(_paragraphs, batched=True)


_FORMATS = {"text": "text", "json": "JSON / JSON Lines", "csv": "CSV", "parquet": "Parquet"}
_READ_FIXES = {
    "text": "a .txt file must be UTF-8 text",
    "json": "a .jsonl file holds one JSON object per line, a .json file one object per line or a list of objects",
    "csv": "a CSV file needs a header row and the same number of cells in every row: quote text cells that hold "
    'commas, quotes or line breaks ("a, b")',
    "parquet": "pass a complete Parquet file (e.g. written by pandas' to_parquet or datasets' Dataset.to_parquet)",
}


def _glob_hint(path) -> str:
    """For a missing data file whose name is a glob pattern: how to pass several files (patterns are not expanded)."""
    if not any(c in os.path.basename(str(path)) for c in "*?["):
        return ""
    return (
        " A glob pattern is not expanded here: pass one file, or the folder that holds the files as --dataset_name "
        "(every data file in it is read)."
    )


def _file_builder(path: str) -> str | None:
    """The `datasets` builder for a local data file, from its extension (`None` if unsupported)."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    return {"txt": "text", "json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}.get(ext)
