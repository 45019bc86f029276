"""Audit hi31 fixes."""

import pytest
import torch

from hf_ext.hyperinf import influence_from_gradients


@pytest.mark.parametrize("method", ["hyperinf", "datainf"])
def test_half_precision_dtype_accumulates_the_sums_in_float32(method):
    """F1: `dtype=torch.bfloat16` (accepted for every method but exact) accumulated the GFIM, the mean evaluation gradient
    and the DataInf / LiSSA passes in bfloat16 too: once a sum reaches 2^8 times an example's term the term rounds away,
    so on 4000 examples in batches of 4 the HyperINF scores were 52% off (DataInf 3%, LiSSA 8%). Only the per-example
    gradients and the returned scores are half precision now."""
    gen = torch.Generator().manual_seed(0)
    train = {k: 0.05 * torch.randn(4000, 4, d, generator=gen) + 0.02 for k, d in (("a", 16), ("b", 12))}
    val = {k: 0.05 * torch.randn(20, 4, d, generator=gen) + 0.02 for k, d in (("a", 16), ("b", 12))}
    exact = influence_from_gradients(
        {k: v.double() for k, v in train.items()}, val, method, batch_size=4, dtype=torch.float64
    )
    half = influence_from_gradients(train, val, method, batch_size=4, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16  # the returned scores keep `dtype`
    error = float((half.double() - exact).abs().max() / exact.abs().max())
    assert error < 0.01, error  # bfloat16 rounding of the gradients and of the scores only (0.2-0.3%)


def test_data_parallel_ranks_compare_the_datasets_contents_not_only_their_lengths(one_process_group, monkeypatch):
    """F2: data-parallel `fit`/`scores` compared only the datasets' lengths across the ranks, so a training set shuffled
    differently on each rank (`Dataset.shuffle()` without a seed) was accepted: each rank differentiated its contiguous
    part of its own order, some examples twice and others never, and the scores landed at the wrong indices. The ranks
    now also compare a digest of the examples' model inputs, in order."""
    from datasets import Dataset

    from hf_ext.hyperinf import InfluenceEstimator

    from .scripts.ddp_influence import rows, tiny_lora

    seen = []
    monkeypatch.setattr(InfluenceEstimator, "_agree", lambda self, what, values: seen.append((what, list(values))))
    data = rows(6, 0)
    estimator = InfluenceEstimator(tiny_lora(), "tracin", batch_size=3, distributed=True)
    for train in (Dataset.from_list(data), Dataset.from_list(data[::-1]), data):
        estimator.fit(train).scores(train)
    fits = [values for what, values in seen if what.startswith("training sets")]
    evals = [values for what, values in seen if what.startswith("evaluation sets")]
    assert len(fits) == len(evals) == 3
    assert fits[0] != fits[1] and evals[0] != evals[1]  # same length, another order: told apart
    assert fits[0] == fits[2] and evals[0] == evals[2]  # a Dataset and a list of the same rows agree
