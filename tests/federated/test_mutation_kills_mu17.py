"""Mutation run 17: Goldfish with one-token windows, its `context_width >= 1` check, and canary fractions as weights.

- `context_width=1`: a row with 2 real tokens has one target, which the hash of that one token may drop; padding
  (left or right, any pad id) must not change that decision (a padded row with one target was skipped).
- `context_width=0` is refused with a `ValueError` naming it wherever Goldfish is configured (the collator at
  construction, not a shape error at its first batch).
- `make_canaries(replication_counts=...)` takes any non-negative weights with a positive sum, normalised by their sum:
  `{10: 3, 1: 7}` and `{10: 0.15, 1: 0.35}` make the same canaries as `{10: 0.3, 1: 0.7}`.
"""

from collections import Counter

import pytest
import torch
from transformers import default_data_collator

from hf_ext.federated import GoldfishCollator, apply_goldfish, goldfish_drop_mask
from hf_ext.federated.memorization import make_canaries


def _dropped_and_kept_targets():
    """Tokens whose one-token window (context_width=1) is dropped / kept with k=2."""
    candidates = torch.arange(5, 200)
    drop = goldfish_drop_mask(candidates.unsqueeze(0), 2, 1)[0]
    return int(candidates[drop][0]), int(candidates[~drop][0])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pad_id", [0, 9])
def test_a_padded_row_with_one_target_drops_what_it_drops_alone(side, pad_id):
    dropped, kept = _dropped_and_kept_targets()
    for target, expected in ((dropped, [7, -100]), (kept, [7, kept])):
        ids = torch.tensor([[7, target]])
        assert apply_goldfish(ids.clone(), 2, 1, ids).tolist() == [expected]  # the row alone
        # the same row padded to the length of a longer one in its batch (the mask forces the per-row path)
        real = [1, 1]
        row, mask = ([pad_id, 7, target], [0] + real) if side == "left" else ([7, target, pad_id], real + [0])
        ids_b = torch.tensor([row, [3, 4, 5]])
        mask_b = torch.tensor([mask, [1, 1, 1]])
        labels = apply_goldfish(ids_b.clone(), 2, 1, ids_b, attention_mask=mask_b)
        assert labels[0][mask_b[0].bool()].tolist() == expected


def test_a_context_width_of_zero_is_refused_by_name():
    with pytest.raises(ValueError, match="`context_width` must be an integer >= 1, got 0"):
        GoldfishCollator(default_data_collator, k=4, context_width=0)
    ids = torch.arange(10, 30).unsqueeze(0)
    with pytest.raises(ValueError, match="`context_width` must be an integer >= 1, got 0"):
        apply_goldfish(ids.clone(), 4, 0, ids)
    with pytest.raises(ValueError, match="`context_width` must be an integer >= 1, got 0"):
        goldfish_drop_mask(ids, 4, 0)
    GoldfishCollator(default_data_collator, k=4, context_width=1)  # the smallest width is fine


def test_replication_counts_are_weights_normalised_by_their_sum():
    def levels(counts):
        return Counter(c.replication for c in make_canaries(10, counts))

    assert levels({10: 0.3, 1: 0.7}) == {10: 3, 1: 7}
    assert levels({10: 3, 1: 7}) == {10: 3, 1: 7}
    assert levels({10: 0.15, 1: 0.35}) == {10: 3, 1: 7}
    assert levels({5: 1, 2: 1}) == {5: 5, 2: 5}
    # the same canaries, not only the same counts
    assert [c.text for c in make_canaries(10, {10: 3, 1: 7})] == [c.text for c in make_canaries(10, {10: 0.3, 1: 0.7})]
