"""rv31 F4: `make_canaries(texts=<pandas DataFrame>)` built its canaries from the column names ("Record 964-59: text",
"Record 876-63: url"), silently: since texts are read in iteration order (pass 30), a DataFrame yields its column
labels, where `texts[0]` used to fail. A two-dimensional `texts` is now refused by name, with the fix."""

import numpy as np
import pandas as pd
import pytest

from hf_ext.federated.memorization import make_canaries


def _frame():
    return pd.DataFrame({"text": [f"document number {i} about things" for i in range(6)], "url": list("abcdef")})


@pytest.mark.parametrize("texts", [_frame(), np.array([["a b", "c d"], ["e f", "g h"], ["i j", "k l"]])])
def test_two_dimensional_texts_are_refused_with_the_fix(texts):
    with pytest.raises(
        ValueError, match=r"`texts` must be a one-dimensional .*got a 2-dimensional .*texts=df\['text'\]"
    ):
        make_canaries(num_canaries=2, texts=texts, seed=0)


def test_the_text_column_of_a_frame_gives_its_documents():
    canaries = make_canaries(num_canaries=2, texts=_frame()["text"], seed=0, num_words=3)
    assert [c.text.split(": ", 1)[1] for c in canaries] == ["document number 0", "document number 1"]
    array = make_canaries(num_canaries=2, texts=np.array(["a b", "c d"]), seed=0, num_words=3)
    assert [c.text.split(": ", 1)[1] for c in array] == ["a b", "c d"]


def test_a_zero_dimensional_array_is_refused_by_its_dimension():
    """A 0-d array (`np.array("one document")`) has `__len__` but no length: refused as 0-dimensional (mu32)."""
    with pytest.raises(ValueError, match=r"one-dimensional .*got a 0-dimensional ndarray"):
        make_canaries(num_canaries=1, texts=np.array("a b c"), seed=0)
