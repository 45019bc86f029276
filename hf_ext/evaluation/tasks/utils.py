"""Dataset loaders of the packaged hf_ext tasks (lm-eval `custom_dataset` hooks): local jsonl next to this file."""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"


def _load(task: str):
    import datasets

    splits = {}
    for split in ("train", "test"):
        path = DATA_DIR / f"{task}_{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; rebuild the task data with `python -m hf_ext.evaluation.task_data`."
            )
        with path.open(encoding="utf-8") as fh:
            splits[split] = datasets.Dataset.from_list([json.loads(line) for line in fh if line.strip()])
    return datasets.DatasetDict(splits)


def load_domain(**kwargs):
    """`hf_ext_domain`: passages of held-out documents with their documentation domain (`label` indexes choices)."""
    return _load("hf_ext_domain")


def load_cloze(**kwargs):
    """`hf_ext_cloze`: passages cut before a word (`context`) and that word with its leading space (`target`)."""
    return _load("hf_ext_cloze")
