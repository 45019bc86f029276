"""Compliance / evaluation fixes of audit pass 19.

1. A DCG by training from scratch only (`--continual_steps 0`) with a snapshot that removes (almost) nothing was
   refused: the unused non-compliant split "forms only 0 blocks", with advice (lower the block or batch size) that could
   not help. Only continual pretraining trains on that split.
2. The packaged tasks' test files are sorted by domain and a `limit` (lm-eval's, `--eval_limit`) scores the first
   items: `limit=40` scored 4 of the 9 domains, never the ones the example snapshot removes most. The test split is
   now served in a fixed shuffled order.
"""

from __future__ import annotations

import json

import pytest

from hf_ext.recipes.compliance import main

TINY = ["--train_models", "--train_steps", "2", "--vocab_size", "512", "--train_batch_size", "4",
        "--model_hidden_size", "32", "--model_layers", "1"]  # fmt: skip


def test_scratch_only_dcg_with_a_snapshot_that_removes_nothing(tmp_path):
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "devtools.docs.python.org.txt").write_text("User-agent: *\nAllow: /\n")
    result = main([*TINY, "--continual_steps", "0", "--robots", str(snap), "--output_dir", str(tmp_path / "o")])
    out = result["dcg_trained"]
    assert {r["task"] for r in out["scratch"]["rows"]} >= {"ALL", "language"}
    assert set(out["losses"]) == {"full", "compliant"}
    assert json.loads((tmp_path / "o" / "dcg_trained.json").read_text())["scratch"] == out["scratch"]
    # continual pretraining does train on the non-compliant split: still refused, by name
    with pytest.raises(ValueError, match="The non_compliant data forms only 0 blocks"):
        main([*TINY, "--continual_steps", "1", "--robots", str(snap), "--output_dir", str(tmp_path / "c")])


@pytest.mark.parametrize("task", ["hf_ext_domain", "hf_ext_cloze"])
def test_test_split_order_is_shuffled_and_fixed(task):
    from hf_ext.evaluation.tasks import utils

    load = utils.load_domain if task == "hf_ext_domain" else utils.load_cloze
    domain_of = (lambda r: r["domain"]) if task == "hf_ext_domain" else (lambda r: utils.host_domain(r["host"]))
    first, again = load()["test"], load()["test"]
    assert first.to_list() == again.to_list()  # the same order on every load
    stored = utils._read(task, "test")
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, first.to_list())) == sorted(map(key, stored))  # the same items
    domains = sorted({domain_of(r) for r in stored})
    head = {domain_of(r) for r in first.to_list()[:40]}
    assert head == set(domains), f"the first 40 items cover {sorted(head)} of {domains}"
    # a domain filter keeps the shuffled order of its items
    networking = load(domains="networking")["test"].to_list()
    assert networking == [r for r in first.to_list() if domain_of(r) == "networking"]
