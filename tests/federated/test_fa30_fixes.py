"""Audit fa30 fixes."""

import math

import pytest

from hf_ext.federated import make_canaries, measure_memorization

from .conftest import tiny_llama


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "1.0", True, None])
def test_measure_memorization_refuses_a_bad_frequency_penalty_by_name(small_tokenizer, value):
    """A NaN or infinite penalty used to fail inside generation naming the logits processor's `penalty`, a string
    with a bare TypeError from math.isfinite, and True / None were read as 1.0 / 0 silently: all are refused up front
    naming `frequency_penalty`."""
    model = tiny_llama(len(small_tokenizer))
    canaries = make_canaries(2, {1: 1.0}, num_words=20, seed=0)
    with pytest.raises(ValueError, match="`frequency_penalty` must be a finite number"):
        measure_memorization(model, small_tokenizer, canaries, (4,), window=8, frequency_penalty=value)


def test_measure_memorization_accepts_int_and_float_penalties(small_tokenizer):
    model = tiny_llama(len(small_tokenizer))
    canaries = make_canaries(2, {1: 1.0}, num_words=20, seed=0)
    for value in (0, 1, 0.5, -0.5):
        out = measure_memorization(model, small_tokenizer, canaries, (4,), window=8, frequency_penalty=value)
        assert len(out["records"]) == 2
