"""mu42: tests that kill mutants of pass 36's federated argument checks which its own tests let survive (the
boundaries and the types that the checks name but no test exercised)."""

import math

import pytest
import torch

from hf_ext.federated import PrivacyAccountant
from hf_ext.federated.aggregation import clip_update
from hf_ext.federated.goldfish import goldfish_drop_mask
from hf_ext.federated.memorization import FrequencyPenaltyLogitsProcessor, assign_canaries, make_canaries


@pytest.mark.parametrize("max_norm", [True, 0, 0.0, -1.0, math.inf, math.nan])
def test_clip_update_refuses_a_bool_and_a_non_positive_bound(max_norm):
    # True is a numbers.Real (== 1): a bool bound would clip to norm 1 silently; 0 would zero the update
    with pytest.raises(ValueError, match="`max_norm` must be a finite number > 0"):
        clip_update({"a": torch.ones(4)}, max_norm)


def test_clip_update_still_clips_at_a_positive_bound():
    out = clip_update({"a": torch.full((4,), 2.0)}, 1.0)
    assert float(out["a"].norm()) == pytest.approx(1.0)


def test_goldfish_refuses_boolean_targets():
    targets = torch.ones(2, 20, dtype=torch.bool)
    with pytest.raises(ValueError, match="`targets` must hold integer token ids, got dtype torch.bool"):
        goldfish_drop_mask(targets, 4, 3)
    assert goldfish_drop_mask(targets.long(), 4, 3).shape == (2, 20)  # the same ids as integers pass


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ([math.inf, 2], "must be finite non-negative numbers"),  # inf >= 0 holds: only the finiteness test refuses it
        ([0, 0], "with a positive sum"),  # no client holds any data: nowhere to put a canary
        ("ab", "must be a sequence of client sizes"),  # a str has a length
        ({"a": 1, "b": 2}, "must be a sequence of client sizes"),  # a dict has a length
    ],
)
def test_assign_canaries_refuses_bad_client_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        assign_canaries(make_canaries(3), sizes)


def test_frequency_penalty_accepts_a_zero_prompt_length():
    # prompt_length=0: every token counts (a decoder-only generate without a prompt); the bound is >= 0
    proc = FrequencyPenaltyLogitsProcessor(1.0, 0)
    assert proc.prompt_length == 0


def test_pld_discretization_accepts_its_upper_bound():
    # the documented range is (0, 0.1]: 0.1 itself is allowed, just above it is not
    assert PrivacyAccountant("pld", 0.1).pld_discretization == 0.1
    with pytest.raises(ValueError, match="pld_discretization"):
        PrivacyAccountant("pld", 0.1000001)


@pytest.mark.parametrize("strategy", ["single_client", "proportional"])
def test_assign_canaries_reads_a_generator_of_canaries_once(strategy):
    """fe42's type check of `canaries` iterated them before the assignment: a generator (which `single_client` read
    in one pass before the check) came back empty, every client with no canary. It is read into a list first."""
    canaries = make_canaries(6, {10: 0.5, 1: 0.5}, num_words=4)
    per_client = assign_canaries((c for c in canaries), [1, 1, 2], strategy, seed=0)
    assert sum(len(x) for x in per_client) == sum(c.replication for c in canaries)
    assert all(c.clients for c in canaries)
