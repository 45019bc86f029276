"""Pairwise additive masking: exact cancellation, uncorrelated uploads, dropout recovery."""

import pytest
import torch

from hf_ext.federated import (
    decode,
    encode,
    fedavg,
    mask_update,
    pairwise_seeds,
    quantization_error_bound,
    remove_dropped_masks,
    secure_weighted_mean,
    sum_masked,
)


def _updates(n=4, size=5000):
    g = torch.Generator().manual_seed(1)
    return [{"a": torch.randn(size, generator=g) * 0.1, "b": torch.randn(3, 4, generator=g)} for _ in range(n)]


def test_masks_cancel_exactly_in_the_sum():
    ups = _updates()
    ids = [3, 7, 11, 12]
    seeds = pairwise_seeds(ids, "secret", round_index=2)
    weights = [5.0, 1.0, 2.0, 8.0]
    masked = [mask_update(u, i, seeds, w) for u, i, w in zip(ups, ids, weights)]
    plain = sum_masked([{k: encode(v * w) for k, v in u.items()} for u, w in zip(ups, weights)])
    summed = sum_masked(masked)
    for k in plain:
        assert torch.equal(summed[k], plain[k])  # residues identical: masks cancel exactly
    mean = secure_weighted_mean(summed, sum(weights), like=ups[0])
    ref = fedavg(ups, weights)
    bound = quantization_error_bound(len(ups), sum(weights))
    for k in ref:
        assert (mean[k].double() - ref[k].double()).abs().max() <= bound + 1e-7


def test_single_masked_update_is_uncorrelated_with_raw():
    ups = _updates(3, 20000)
    seeds = pairwise_seeds([0, 1, 2], "s")
    masked = mask_update(ups[0], 0, seeds)["a"].double()
    raw = ups[0]["a"].double()
    corr = torch.corrcoef(torch.stack([masked, raw]))[0, 1]
    assert abs(float(corr)) < 0.05
    # the residues look uniform on [0, 2^62): mean near the middle
    assert float(masked.mean()) / 2**62 == pytest.approx(0.5, abs=0.02)
    # while the unmasked encoding is perfectly correlated with the raw update
    assert float(torch.corrcoef(torch.stack([decode(encode(ups[0]["a"])), raw]))[0, 1]) > 0.999


def test_dropout_recovery_with_revealed_seeds():
    ups = _updates(4, 100)
    ids = [0, 1, 2, 3]
    seeds = pairwise_seeds(ids, "s", 1)
    masked = [mask_update(u, i, seeds, 1.0) for u, i in zip(ups, ids)]
    survivors, dropped = [0, 2, 3], [1]
    partial = sum_masked([masked[i] for i in survivors])
    # without recovery the survivors' masks with the dropped client remain: garbage
    garbage = secure_weighted_mean(partial, 3.0)
    ref = fedavg([ups[i] for i in survivors], [1, 1, 1])
    assert (garbage["a"] - ref["a"]).abs().max() > 1.0
    revealed = {p: s for p, s in seeds.items() if (p[0] in dropped) != (p[1] in dropped)}
    fixed = secure_weighted_mean(remove_dropped_masks(partial, survivors, dropped, revealed), 3.0)
    assert (fixed["a"] - ref["a"]).abs().max() < 1e-6
    with pytest.raises(ValueError, match="must reveal"):
        remove_dropped_masks(partial, survivors, dropped, {})


def test_invalid_inputs():
    with pytest.raises(ValueError, match="distinct"):
        pairwise_seeds([1, 1], "s")
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_seeds([1], "s")
    seeds = pairwise_seeds([0, 1], "s")
    with pytest.raises(ValueError, match="not a participant"):
        mask_update({"a": torch.zeros(2)}, 5, seeds)
    with pytest.raises(ValueError, match="too large"):
        encode(torch.tensor([1e15]))
