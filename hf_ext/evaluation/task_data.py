"""Build the local data of the packaged lm-eval tasks from the embedded corpus (deterministic, no network).

Two tasks, both over passages of the corpus' held-out documents (`load_corpus("test")`), with a few-shot pool drawn
from the train split:

* `hf_ext_domain` (multiple choice, log-likelihood): which of the 9 documentation domains a passage comes from.
* `hf_ext_cloze` (LAMBADA-style next word): a passage cut before a word; the model scores the word.
  `hf_ext_cloze_url` is the same items with the document's URL host in front (`"URL: <host>\n\n"`, MeCo's format),
  for comparing metadata-conditioned models with and without the URL at inference. Each cloze item also keeps its
  document's full `url`, so a recipe can build the prompt prefix in the format its model was trained with.

The files ship with the package (`hf_ext/evaluation/tasks/data/*.jsonl`), so every user evaluates on the same items;
`python -m hf_ext.evaluation.task_data` rebuilds them (the embedded corpus is read from the interpreter's standard
library, so a different Python minor version gives different, equally valid, items).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

#: Answer choices of `hf_ext_domain`, in label order (label = index). Plain words, so a model scores their meaning.
DOMAIN_CHOICES: dict[str, str] = {
    "concurrency": "concurrency",
    "data_formats": "data formats",
    "datatypes": "data types",
    "devtools": "developer tools",
    "filesystem": "files",
    "language": "language reference",
    "networking": "networking",
    "numeric": "numbers and math",
    "text": "text processing",
}

MIN_PASSAGE_CHARS = 160
MAX_PASSAGE_CHARS = 480
MAX_PASSAGES_PER_DOC = 8
FEWSHOT_PER_DOMAIN = 4
FEWSHOT_CLOZE = 32
MIN_CLOZE_CONTEXT = 120
_WORD = re.compile(r" ([A-Za-z][A-Za-z_]{3,})(?=[ .,;:)\n])")


def _digest(*parts) -> int:
    return int(hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def _passages(text: str) -> list[str]:
    """Paragraph-aligned passages of MIN..MAX characters (whitespace normalized to single spaces)."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    out, current = [], ""
    for para in paragraphs:
        if not para:
            continue
        current = f"{current} {para}".strip() if current else para
        if len(current) >= MIN_PASSAGE_CHARS:
            if len(current) > MAX_PASSAGE_CHARS:  # cut at a word boundary
                current = current[:MAX_PASSAGE_CHARS].rsplit(" ", 1)[0]
            out.append(current)
            current = ""
    return out


def _doc_passages(record: dict) -> list[str]:
    passages = _passages(record["text"])
    order = sorted(range(len(passages)), key=lambda i: _digest(record["url"], i))
    return [passages[i] for i in sorted(order[:MAX_PASSAGES_PER_DOC])]


def _domain_item(record: dict, passage: str, k: int) -> dict:
    labels = list(DOMAIN_CHOICES)
    return {
        "id": f"{record['source']}#{k}",
        "passage": passage,
        "domain": record["domain"],
        "label": labels.index(record["domain"]),
    }


def _cloze_item(record: dict, passage: str, k: int) -> dict | None:
    words = [m for m in _WORD.finditer(passage) if m.start() >= MIN_CLOZE_CONTEXT]
    if not words:
        return None
    m = words[_digest(record["url"], k, "cloze") % len(words)]
    return {
        "id": f"{record['source']}#{k}",
        "context": passage[: m.start()],
        "target": " " + m.group(1),
        "host": urlsplit(record["url"]).netloc,  # for the URL-conditioned variant (metadata conditioning)
        "url": record["url"],  # the full URL, for prompts in a metadata-conditioned model's own format
    }


def build_task_records(max_test_items: int = 200) -> dict[str, dict[str, list[dict]]]:
    """Items of both tasks: `{"hf_ext_domain": {"train": [...], "test": [...]}, "hf_ext_cloze": {...}}`.

    Test items come from the held-out documents (every passage, up to `MAX_PASSAGES_PER_DOC` per document); the
    few-shot pool (`train`) from train documents chosen by a hash of their URL (`FEWSHOT_PER_DOMAIN` per domain for
    the domain task, `FEWSHOT_CLOZE` for the cloze task). Same corpus in, same items out.
    """
    from ..data import load_corpus

    test_docs = sorted(load_corpus("test"), key=lambda r: r["url"])
    train_docs = sorted(load_corpus("train"), key=lambda r: _digest(r["url"], "fewshot"))
    out: dict[str, dict[str, list[dict]]] = {"hf_ext_domain": {}, "hf_ext_cloze": {}}

    domain_test, cloze_test = [], []
    for rec in test_docs:
        for k, passage in enumerate(_doc_passages(rec)):
            domain_test.append(_domain_item(rec, passage, k))
            item = _cloze_item(rec, passage, k)
            if item is not None:
                cloze_test.append(item)
    domain_fs, cloze_fs, per_domain = [], [], dict.fromkeys(DOMAIN_CHOICES, 0)
    for rec in train_docs:
        passages = _doc_passages(rec)
        if not passages:
            continue
        if per_domain[rec["domain"]] < FEWSHOT_PER_DOMAIN:
            per_domain[rec["domain"]] += 1
            domain_fs.append(_domain_item(rec, passages[0], 0))
        if len(cloze_fs) < FEWSHOT_CLOZE:
            item = _cloze_item(rec, passages[0], 0)
            if item is not None:
                cloze_fs.append(item)
        if len(cloze_fs) >= FEWSHOT_CLOZE and min(per_domain.values()) >= FEWSHOT_PER_DOMAIN:
            break
    out["hf_ext_domain"] = {"train": domain_fs, "test": domain_test[:max_test_items]}
    out["hf_ext_cloze"] = {"train": cloze_fs, "test": cloze_test[:max_test_items]}
    return out


def write_task_data(out_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Write `<task>_<split>.jsonl` files and `build_info.json` (atomically) and return `{file name: path}`."""
    from ..data.corpus import CORPUS_VERSION
    from ..utils.io import atomic_write_json, atomic_write_text

    out = Path(out_dir) if out_dir is not None else Path(__file__).parent / "tasks" / "data"
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    counts = {}
    for task, splits in build_task_records().items():
        for split, rows in splits.items():
            path = out / f"{task}_{split}.jsonl"
            atomic_write_text(str(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            written[path.name] = str(path)
            counts[f"{task}_{split}"] = len(rows)
    info = {"corpus_version": CORPUS_VERSION, "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    atomic_write_json(str(out / "build_info.json"), {**info, "counts": counts})
    written["build_info.json"] = str(out / "build_info.json")
    return written


if __name__ == "__main__":
    for name, path in write_task_data(sys.argv[1] if len(sys.argv) > 1 else None).items():
        print(name, path)
