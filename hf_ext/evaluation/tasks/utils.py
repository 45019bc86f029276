"""Dataset loaders of the packaged hf_ext tasks (lm-eval `custom_dataset` hooks): local jsonl next to this file.

lm-eval calls a `custom_dataset` hook with the task's `metadata` (plus `--metadata` / `TaskManager(metadata=...)` and
the model arguments) as keyword arguments. The hooks here read one of them, `domains`: the test items are then only
those of passages from these documentation domains (e.g. a GRAPE target made of `networking+filesystem`), while the
few-shot pool stays the full one (shots from one domain only would bias the domain task towards its labels):

    lm_eval ... --tasks hf_ext_domain,hf_ext_cloze --metadata '{"domains": "networking+filesystem"}'
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"


def _read(task: str, split: str) -> list[dict]:
    path = DATA_DIR / f"{task}_{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; rebuild the task data with `python -m hf_ext.evaluation.task_data`."
        )
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def known_domains() -> list[str]:
    """The documentation domains the packaged items come from (corpus names, e.g. `data_formats`)."""
    return sorted({r["domain"] for r in _read("hf_ext_domain", "train")})


def parse_domains(domains) -> list[str] | None:
    """`None`/empty -> `None` (all items); `"a+b"`, `"a,b"` or a list -> the sorted list of known domain names."""
    if domains is None:
        return None
    if isinstance(domains, str):
        names = [d.strip() for d in domains.replace(",", "+").split("+") if d.strip()]
    elif isinstance(domains, list | tuple | set | frozenset):
        names = [str(d).strip() for d in domains]
    else:
        raise TypeError(
            f"metadata 'domains' must be a string like 'networking+filesystem' or a list, got {domains!r}."
        )
    if not names:
        return None
    known = known_domains()
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"metadata 'domains' names unknown domains {unknown}; use some of {known}.")
    return sorted(set(names))


def host_domain(host: str) -> str:
    """Corpus domain of a cloze item from its URL host (`data-formats.docs.python.org` -> `data_formats`)."""
    return host.split(".", 1)[0].replace("-", "_")


def _load(task: str, domain_of, domains=None):
    import random

    import datasets

    wanted = parse_domains(domains)
    splits = {}
    for split in ("train", "test"):
        rows = _read(task, split)
        if split == "test":
            # the files hold the items sorted by domain, and a `limit` (lm-eval's, `--eval_limit`) scores the first
            # ones: in a fixed shuffled order (the same on every run and machine) a limited run samples every domain
            random.Random(f"{task}-test-order").shuffle(rows)
        if wanted is not None and split == "test":
            rows = [r for r in rows if domain_of(r) in wanted]
            if not rows:
                raise ValueError(f"{task}: no test item comes from the domains {wanted}.")
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)


def load_domain(domains=None, **kwargs):
    """`hf_ext_domain`: passages of held-out documents with their documentation domain (`label` indexes choices).

    `domains` (lm-eval metadata): keep only test passages of these domains (`"networking+filesystem"` or a list).
    """
    return _load("hf_ext_domain", lambda r: r["domain"], domains)


def load_cloze(domains=None, **kwargs):
    """`hf_ext_cloze`: passages cut before a word (`context`) and that word with its leading space (`target`).

    `domains` (lm-eval metadata): keep only test passages of these domains (read from the item's URL host).
    """
    return _load("hf_ext_cloze", lambda r: host_domain(r["host"]), domains)
