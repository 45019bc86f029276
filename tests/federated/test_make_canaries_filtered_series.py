"""make_canaries reads `texts` in order, whatever its index (audit rv30 F3).

A pandas Series of held-out documents taken from a DataFrame by a filter (`df[df.split == "test"]["text"]`) keeps its
index labels (1, 3, 5, ...): `texts[i]` looked label 0 up and failed with a raw `KeyError: 0` (or, with a shuffled
integer index, took the documents in label order), although numpy arrays and Series are documented as accepted.
"""

from hf_ext.federated.memorization import make_canaries


def test_a_filtered_pandas_series_gives_the_canaries_of_its_documents_in_order():
    import pandas as pd

    docs = ["alpha beta gamma", "delta epsilon zeta", "eta theta iota"]
    frame = pd.DataFrame({"text": ["train doc one", docs[0], "train doc two", docs[1], "train doc three", docs[2]]})
    frame["split"] = ["train", "test"] * 3
    held_out = frame[frame.split == "test"]["text"]  # index labels 1, 3, 5
    assert make_canaries(3, texts=held_out, num_words=2) == make_canaries(3, texts=docs, num_words=2)
    shuffled = pd.Series(docs, index=[2, 0, 1])  # read in order, not by label
    assert make_canaries(3, texts=shuffled, num_words=2) == make_canaries(3, texts=docs, num_words=2)


def test_a_set_of_texts_is_refused_its_order_differs_between_processes():
    import pytest

    with pytest.raises(ValueError, match=r"`texts` is a set.*sorted\(texts\)"):
        make_canaries(2, texts={"alpha beta", "gamma delta", "eps zeta"}, num_words=2)
