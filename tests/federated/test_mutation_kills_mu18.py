"""Mutation run 18: the Goldfish short-row warning at its boundary.

A row of `L` real tokens has `L - 1` targets; Goldfish drops only targets `t >= h - 1`, so a row with fewer than `h`
targets has none dropped and `apply_goldfish` warns, while a row with exactly `h` targets (one droppable) must not.
This holds on both paths: unpadded batches (length `h` warns, `h + 1` does not) and per-row with an attention mask.
"""

import warnings

import torch

from hf_ext.federated import apply_goldfish, goldfish_drop_mask

H = 13


def _goldfish_warnings(*args, **kwargs):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = apply_goldfish(*args, **kwargs)
    return out, [w for w in record if "fewer targets than the hashed window" in str(w.message)]


def test_an_unpadded_batch_of_h_tokens_warns_and_one_of_h_plus_1_does_not():
    short = torch.arange(1, H + 1).repeat(2, 1)  # H tokens per row: H - 1 targets, nothing can be dropped
    out, record = _goldfish_warnings(short.clone(), k=2, context_width=H)
    assert len(record) == 1 and torch.equal(out, short)
    # the same with an all-ones attention mask (the unpadded path too)
    _, record = _goldfish_warnings(short.clone(), k=2, context_width=H, attention_mask=torch.ones_like(short))
    assert len(record) == 1
    long = torch.arange(1, H + 2).repeat(2, 1)  # H + 1 tokens: H targets, the last one droppable
    _, record = _goldfish_warnings(long.clone(), k=2, context_width=H)
    assert record == []


def test_a_padded_row_with_exactly_h_targets_does_not_warn():
    ids = torch.tensor([list(range(1, H + 2)) + [0], list(range(2, H + 4))])  # H + 1 real tokens + a pad; H + 2
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    out, record = _goldfish_warnings(ids.clone(), k=2, context_width=H, input_ids=ids, attention_mask=mask)
    assert record == []
    # row 0's drops are those of its unpadded targets (only the last one, at position H, can be dropped)
    drop = goldfish_drop_mask(ids[0, 1 : H + 1].unsqueeze(0), 2, H)[0]
    assert not drop[: H - 1].any()
    assert (out[0, 1 : H + 1] == -100).tolist() == drop.tolist()
    # one real token fewer: H - 1 targets in row 0, none droppable -> one warning
    mask[0, -2] = 0
    _, record = _goldfish_warnings(ids.clone(), k=2, context_width=H, input_ids=ids, attention_mask=mask)
    assert len(record) == 1
