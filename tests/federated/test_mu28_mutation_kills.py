"""Mutation run 28: the Goldfish `hash-table` rule drops a target iff `T[key] < 1/k`, strictly.

The table holds float32 multiples of 2**-24, so `1/k` is an exact table value for some power-of-two `k`: with the
released checkpoints' `k = 32` (and `k = 16`) the table holds an entry equal to `1/k`, and a window hashing to it must
be kept (a `<=` comparison dropped it). The expected masks are computed here from the spec rule on the table itself.
"""

import pytest
import torch

from hf_ext.federated import apply_goldfish, goldfish_drop_mask
from hf_ext.federated.goldfish import GOLDFISH_TABLE_SIZE, goldfish_table


@pytest.mark.parametrize("k", [16, 32])
def test_a_window_hashing_to_a_table_entry_equal_to_one_over_k_is_kept(k):
    table = goldfish_table()
    hits = (table == 1.0 / k).nonzero().flatten().tolist()
    assert hits, "the table holds an entry equal to 1/k for this k (float32 multiples of 2**-24)"
    key = hits[0]
    assert 0 < key < GOLDFISH_TABLE_SIZE
    h = 13
    # window of h targets ending at the last one: twelve 1s and `key`, whose product mod 1_000_003 is `key`
    boundary = [1] * (h - 1) + [key]
    # a second window whose key holds a value strictly below 1/k (dropped) and one strictly above (kept)
    below = next(i for i in range(2, 10_000) if float(table[i]) < 1.0 / k)
    above = next(i for i in range(2, 10_000) if float(table[i]) > 1.0 / k)
    targets = torch.tensor([boundary, [1] * (h - 1) + [below], [1] * (h - 1) + [above]], dtype=torch.int64)
    mask = goldfish_drop_mask(targets, k, h)
    # spec: drop iff T[key] < 1/k; only the last position of each row has a full window
    assert not mask[:, : h - 1].any()
    assert mask[:, h - 1].tolist() == [False, True, False]
    # through the HF labels path (labels shifted by one inside the loss)
    labels = torch.cat([torch.zeros(3, 1, dtype=torch.int64), targets], dim=1)
    out = apply_goldfish(labels, k, h, input_ids=labels)
    assert out[:, -1].tolist() == [key, -100, above]


def test_decode_reads_residues_from_two_to_the_61_as_negative():
    """`decode`'s documented boundary: residues >= 2**61 are negative (two's complement modulo 2**62), so 2**61 itself
    decodes to -2**61 and 2**61 - 1 to +2**61 - 1 (the protocol's sums never reach it, `encode` bounds them below)."""
    from hf_ext.federated.secure_aggregation import MODULUS, decode

    half = MODULUS >> 1
    got = decode(torch.tensor([half, half - 1, half + 1, MODULUS - 1, 0], dtype=torch.int64), 0)
    assert got.tolist() == [float(-half), float(half - 1), float(-(half - 1)), -1.0, 0.0]
    # the same, with a fractional scale, and for a residue above the modulus (reduced first)
    assert decode(torch.tensor([half + MODULUS], dtype=torch.int64), 3).tolist() == [-half / 8]


def test_rounding_error_bound_is_the_attained_worst_case_of_rounding_to_the_step():
    """`rounding_error_bound(update, scale, step)`: each entry of `scale * update` rounded to a multiple of `step` is
    off by at most half a step, so the relative L2 error is at most `sqrt(d) * step / 2 / (scale * ||update||)`. The
    bound is attained when every entry sits half way between two multiples (odd multiples of `step / 2`); measured
    here by really rounding through `encode`/`decode` in float64. A bound twice as large refused uploads whose actual
    rounding error is 0.25-0.5 relative."""
    from hf_ext.federated.secure_aggregation import decode, encode, rounding_error_bound

    frac_bits = 2
    step = 2.0**-frac_bits
    scale = 3.0
    scaled = torch.tensor([0.5, -1.5, 2.5, 3.5, -0.5, 7.5], dtype=torch.float64) * step  # odd multiples of step / 2
    update = {"b": (scaled[:2] / scale).clone(), "a": (scaled[2:] / scale).reshape(2, 2).clone()}
    flat = torch.cat([update["a"].reshape(-1), update["b"]]) * scale
    rounded = decode(encode(flat, frac_bits), frac_bits)
    actual = float((rounded - flat).norm() / flat.norm())
    assert float((rounded - flat).abs().max()) == step / 2  # every entry off by exactly half a step
    assert rounding_error_bound(update, scale, step) == pytest.approx(actual, rel=1e-12)
    # a generic update: the bound holds, and is the half-step formula
    gen = torch.Generator().manual_seed(0)
    update = {"w": torch.randn(5, 7, generator=gen, dtype=torch.float64)}
    flat = update["w"].reshape(-1) * scale
    rounded = decode(encode(flat, frac_bits), frac_bits)
    bound = rounding_error_bound(update, scale, step)
    assert float((rounded - flat).norm() / flat.norm()) <= bound
    assert bound == pytest.approx(35**0.5 * step / 2 / (scale * float(update["w"].norm())), rel=1e-12)
