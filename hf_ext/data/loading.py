"""Load the text data a recipe trains on: the embedded corpus by default, a hub dataset or local files on request."""

from __future__ import annotations

import os


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (`HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE`)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    return False


def load_text_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    text_column: str = "text",
    validation_fraction: float = 0.05,
    seed: int = 0,
):
    """Return `(train, validation)` `datasets.Dataset`s holding `text_column`.

    With neither `dataset_name` nor `train_file`, the embedded corpus (`hf_ext.data.load_corpus`) is used.
    Errors name the argument at fault and are raised before any download or training.
    """
    from datasets import load_dataset

    from .corpus import load_corpus

    if dataset_name and train_file:
        raise ValueError("Pass either --dataset_name or --train_file, not both.")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
    if dataset_name is None and train_file is None:
        train, valid = load_corpus("train"), load_corpus("test")
    elif train_file is not None:
        for arg, path in (("--train_file", train_file), ("--validation_file", validation_file)):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{arg}={path!r} does not exist; pass a .txt, .json/.jsonl, .csv or .parquet file.")
        ext = train_file.rsplit(".", 1)[-1].lower()
        builder = {"txt": "text", "json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}.get(ext)
        if builder is None:
            raise ValueError(f"--train_file has unsupported extension {ext!r}; use .txt, .json, .jsonl, .csv or .parquet.")
        files = {"train": train_file}
        if validation_file:
            files["validation"] = validation_file
        raw = load_dataset(builder, data_files=files)
        train = raw["train"]
        valid = raw["validation"] if "validation" in raw else None
    else:
        is_local = os.path.isdir(dataset_name)
        if hub_offline() and not is_local:
            raise ValueError(
                f"--dataset_name={dataset_name!r} needs the Hugging Face Hub, but HF_HUB_OFFLINE is set. Drop "
                "--dataset_name to train on the embedded offline corpus, point it at a local dataset folder, or pass "
                "--train_file with a local file."
            )
        try:
            raw = load_dataset(dataset_name, dataset_config_name)
        except (ConnectionError, OSError) as err:
            raise ValueError(
                f"Could not load --dataset_name={dataset_name!r} ({err.__class__.__name__}: {err}). Without Hub "
                "access, drop --dataset_name to use the embedded offline corpus or pass --train_file."
            ) from err
        train = raw["train"]
        valid = raw["validation"] if "validation" in raw else (raw["test"] if "test" in raw else None)
    if text_column not in train.column_names:
        raise ValueError(
            f"The training data has no column {text_column!r} (columns: {train.column_names}); "
            "name the text column with --text_column."
        )
    if valid is None:
        parts = train.train_test_split(test_size=validation_fraction, seed=seed)
        train, valid = parts["train"], parts["test"]
    return train, valid
