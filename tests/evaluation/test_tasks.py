"""The packaged task data: deterministic, built from the held-out split, few-shot pool disjoint from the test items."""

import json
import sys
from pathlib import Path

import pytest

from hf_ext.evaluation import task_dir
from hf_ext.evaluation.task_data import DOMAIN_CHOICES, build_task_records

DATA = Path(task_dir()) / "data"


def _read(name):
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def built():
    return build_task_records()


def test_shipped_files_are_what_the_builder_makes(built):
    info = json.loads((DATA / "build_info.json").read_text())
    if info["python"] != f"{sys.version_info.major}.{sys.version_info.minor}":
        pytest.skip(f"task data was built on Python {info['python']}; the embedded corpus differs by version")
    for task, splits in built.items():
        for split, rows in splits.items():
            assert _read(f"{task}_{split}.jsonl") == rows, (task, split)
            assert info["counts"][f"{task}_{split}"] == len(rows)
    assert build_task_records() == built  # deterministic


def test_items_come_from_the_right_corpus_split(built, corpus_test):
    held_out = set(corpus_test["source"])
    for task in ("hf_ext_domain", "hf_ext_cloze"):
        test_sources = {r["id"].rsplit("#", 1)[0] for r in built[task]["test"]}
        fewshot_sources = {r["id"].rsplit("#", 1)[0] for r in built[task]["train"]}
        assert test_sources <= held_out and not fewshot_sources & held_out
        assert len(built[task]["test"]) >= 90 and len(built[task]["train"]) >= 30
    labels = [r["label"] for r in built["hf_ext_domain"]["train"]]
    assert sorted(set(labels)) == list(range(len(DOMAIN_CHOICES))) == list(range(9))  # every domain in the shots
    for r in built["hf_ext_domain"]["test"]:
        assert list(DOMAIN_CHOICES)[r["label"]] == r["domain"]
    for r in built["hf_ext_cloze"]["test"]:
        assert r["target"].startswith(" ") and r["target"][1:].isidentifier() and len(r["context"]) >= 120


def test_test_items_found_verbatim_in_the_train_split_are_the_documented_ten():
    """The held-out split is chosen per document, and standard-library docs repeat text across documents (the `class`
    statement topic is a section of the `compound` topic): docs/evaluation.md states which test items occur verbatim
    in train-split documents; this keeps that statement true."""
    info = json.loads((DATA / "build_info.json").read_text())
    if info["python"] != f"{sys.version_info.major}.{sys.version_info.minor}":
        pytest.skip(f"task data was built on Python {info['python']}; the embedded corpus differs by version")
    from hf_ext.data import load_corpus

    train = "\n".join(" ".join(t.split()) for t in load_corpus("train")["text"])
    domain = sorted(x["id"].split("#")[0] for x in _read("hf_ext_domain_test.jsonl") if x["passage"] in train)
    cloze = sorted(x["id"].split("#")[0] for x in _read("hf_ext_cloze_test.jsonl") if x["context"] + x["target"] in train)
    expected = ["doctest.DebugRunner"] * 2 + ["topic:class"] * 7 + ["xml.sax.saxutils.quoteattr"]
    assert domain == cloze == expected
