"""Bad-input audit br18, federated: arguments that used to give plausible numbers or raw errors."""

import math

import numpy as np
import pytest

from hf_ext.federated import char_bleu


@pytest.mark.parametrize("max_order", [0, -1, -4])
def test_char_bleu_refuses_no_ngram_order(max_order):
    """max_order <= 0 returned the brevity penalty alone: 0.80 for an unrelated hypothesis."""
    with pytest.raises(ValueError, match="`max_order` must be >= 1"):
        char_bleu("hello world", "zzzzzzzzz", max_order=max_order)


@pytest.mark.parametrize("max_order", [True, 2.0, "4", None])
def test_char_bleu_refuses_non_int_order(max_order):
    """True ran as 1; 2.0 / "4" / None failed inside `range`."""
    with pytest.raises(TypeError, match="`max_order` must be an int >= 1"):
        char_bleu("hello world", "hello word", max_order=max_order)


@pytest.mark.parametrize("which", ["reference", "hypothesis"])
@pytest.mark.parametrize("value", [None, [], {}, ["h", "i"], b"hello"])
def test_char_bleu_refuses_non_str_texts(which, value):
    """None / [] / {} scored 0.0 as if they were empty text."""
    kwargs = {"reference": "hello world", "hypothesis": "hello world", which: value}
    with pytest.raises(TypeError, match=f"`{which}` must be a str"):
        char_bleu(**kwargs)


def test_char_bleu_valid_input_unchanged():
    assert char_bleu("", "abc") == 0.0 and char_bleu("abc", "") == 0.0  # documented: empty text scores 0
    assert char_bleu("abcdefgh", "abcd", max_order=np.int64(4)) == pytest.approx(math.exp(1 - 2))
    assert char_bleu("abcde", "abcdx", max_order=1) == pytest.approx(4 / 5)
