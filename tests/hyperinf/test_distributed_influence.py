"""Data-parallel influence: `InfluenceEstimator` / `InfluenceEngine` over torch.distributed give one process's scores.

Before, every process of a `torchrun --nproc_per_node 2` launch computed the gradients of the whole training set and
every score on its own (twice the work, nothing shared), and `InfluenceEstimator` had no `distributed` option.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset

from hf_ext.hyperinf import InfluenceEngine, InfluenceEstimator

from .scripts.ddp_influence import rows, tiny_lora


def _close(ddp, single, dtype: str) -> None:
    ddp, single = np.asarray(ddp), np.asarray(single)
    tol = 1e-10 if dtype == "float64" else 1e-5
    # float32: one process with another batch size already moves the scores by ~6e-6 of their scale (summation order)
    np.testing.assert_allclose(ddp, single, rtol=tol, atol=tol * np.abs(single).max())


@pytest.mark.distributed
def test_two_ranks_score_their_shards_and_match_one_process(tmp_path, run_two_ranks):
    out = tmp_path / "ddp"
    run_two_ranks("tests/hyperinf/scripts/ddp_influence.py", out, timeout=300)
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    cases = [key for key, value in ranks[0].items() if isinstance(value, dict) and "shard" in value]
    assert len(cases) == 8, cases  # hyperinf, datainf, lissa, tracin, exact (gfim, fim) in float32 / float64
    for key in cases:
        r0, r1 = ranks[0][key], ranks[1][key]
        assert r0["distributed"] and r1["distributed"], key
        # 9 examples: rank 0 differentiates the first 5 in `fit`, rank 1 the last 4 (not all 9 each)
        assert (r0["shard"], r1["shard"]) == ([0, 5], [5, 9]), key
        assert (r0["fit_examples"], r1["fit_examples"]) == (5, 4), key
        if key.startswith(("hyperinf", "exact", "tracin")):  # one pass: 3 + 2 evaluation examples, then the shard
            assert (r0["scores_examples"], r1["scores_examples"]) == (8, 6), key
        assert r0["num_train"] == r1["num_train"] == 9, key
        assert r0["solvers"] == r1["solvers"], f"{key}: the ranks fitted different solvers"
        assert r0["ddp"] == r1["ddp"], f"{key}: the ranks returned different scores"
        assert len(r0["ddp"]) == 9
        _close(r0["ddp"], r0["single"], key.split("-")[1])
    # one training example: rank 1 has an empty shard
    assert ranks[0]["empty_shard"]["ddp"] == ranks[1]["empty_shard"]["ddp"]
    _close(ranks[0]["empty_shard"]["ddp"], ranks[0]["empty_shard"]["single"], "float64")
    for rank in ranks:  # distributed=None warns that every rank must call fit and scores; distributed=True does not
        assert len(rank["auto_warning"]["auto"]) == 1, rank["auto_warning"]
        assert "every process must call fit and scores" in rank["auto_warning"]["auto"][0]
        assert rank["auto_warning"]["explicit"] == []
    assert ranks[0]["list"] == ranks[1]["list"] == ranks[0]["hyperinf-float32-"]["ddp"]  # a list: the same shards
    # an error in rank 1's shard only is raised on both ranks (no hang), with the example's index in the whole set
    assert ranks[1]["bad_example"].startswith("ValueError: example 7 has no labelled next token")
    assert ranks[0]["bad_example"].startswith(
        "RuntimeError: The pass over the training gradients of `fit` failed on rank 1"
    )
    for rank in ranks:  # different training sets on the two ranks: refused on both
        assert rank["differing"].startswith("ValueError: The 2 processes passed different training sets"), rank
    for method, scores in ranks[0]["engine"].items():  # InfluenceEngine(process_group=...), rank 0 without eval part
        assert scores["ddp"] == ranks[1]["engine"][method]["ddp"], method
        _close(scores["ddp"], scores["single"], "float64")
    assert ranks[1]["engine_bad_source"].startswith("TypeError: `train_source` must be a gradient source")
    assert ranks[0]["engine_bad_source"].startswith("RuntimeError: Checking `train_source` failed on rank 1")


def test_distributed_path_on_one_process_equals_the_plain_one(one_process_group):
    """`distributed=True` runs every collective (world size 1) and gives the plain run's scores; `None` stays off
    with one process; the engine's error exchange re-raises the process's own error."""
    train, evals = Dataset.from_list(rows(5, 0)), Dataset.from_list(rows(3, 1))
    model = tiny_lora()
    plain = InfluenceEstimator(model, "datainf", batch_size=2, distributed=False).fit(train).scores(evals)
    auto = InfluenceEstimator(model, "datainf", batch_size=2)
    assert not auto.distributed
    estimator = InfluenceEstimator(model, "datainf", batch_size=2, distributed=True)
    assert estimator.distributed
    scores = estimator.fit(train).scores(evals)
    assert estimator.train_shard == range(5)
    np.testing.assert_allclose(scores, plain, rtol=1e-6, atol=1e-6 * np.abs(plain).max())
    engine = InfluenceEngine(estimator.config, {"a": (1, 2)}, process_group=one_process_group)
    with pytest.raises(KeyError, match="mine"):
        engine.run_collectively(lambda: {}["mine"], "A step")


def test_shards_are_contiguous_rank_major_like_dataset_shard():
    """Each rank's part is `Dataset.shard(world, rank, contiguous=True)` (a list of dicts: the same rows); the parts in
    rank order are the dataset, also when the sizes differ or a part is empty."""
    estimator = InfluenceEstimator(tiny_lora(), batch_size=2, distributed=False)
    for n, world in ((10, 3), (9, 2), (2, 3)):
        data = rows(n, 0)
        dataset = Dataset.from_list(data)
        ids_from_parts, ids_from_lists = [], []
        for rank in range(world):
            estimator.engine = SimpleNamespace(world_size=world, rank=rank)
            part, indices = estimator._shard(dataset)
            ids_from_parts += [part[i]["input_ids"] for i in range(len(part))]
            listed, same = estimator._shard(data)
            assert same == indices
            ids_from_lists += [listed[i]["input_ids"] for i in range(len(listed))]
            if len(indices):
                expected = dataset.shard(num_shards=world, index=rank, contiguous=True)
                assert [row["input_ids"] for row in expected] == [part[i]["input_ids"] for i in range(len(part))]
        assert ids_from_parts == ids_from_lists == [row["input_ids"] for row in data]


def test_distributed_true_without_a_process_group_is_refused():
    with pytest.raises(ValueError, match="distributed=True but torch.distributed is not initialized"):
        InfluenceEstimator(tiny_lora(), distributed=True)
    with pytest.raises(TypeError, match="`distributed` must be None"):
        InfluenceEstimator(tiny_lora(), distributed="yes")
    with pytest.raises(ValueError, match="`process_group` was given but torch.distributed is not initialized"):
        InfluenceEngine(InfluenceEstimator(tiny_lora()).config, {"a": (1, 2)}, process_group=object())
