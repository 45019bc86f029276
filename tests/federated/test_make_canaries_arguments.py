"""make_canaries refuses bad arguments by name instead of failing deep inside (or silently using a default).

Before: a float `num_canaries` or `num_words` failed with a raw TypeError from slicing / range, a str count with a
comparison TypeError, a list of pairs for `replication_counts` with an AttributeError, `replication_counts={}`
silently became the paper's default mix, a str `vocabulary` drew single letters, `["a", "a"]` passed the "2 distinct
words" check, and a set vocabulary gave other canaries in every process (str hashing is salted per process).
"""

import os
import subprocess
import sys

import pytest

from hf_ext.federated.memorization import make_canaries


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_canaries": 2.5}, "`num_canaries` must be an integer > 0"),
        ({"num_canaries": "3"}, "`num_canaries` must be an integer > 0"),
        ({"num_canaries": True}, "`num_canaries` must be an integer > 0"),
        ({"num_canaries": 3, "num_words": 2.5}, "`num_words` must be an integer >= 1"),
        ({"num_canaries": 3, "replication_counts": {}}, "`replication_counts` must be a non-empty dict"),
        ({"num_canaries": 3, "replication_counts": [(10, 0.3), (1, 0.7)]}, "`replication_counts` must be a non-empty"),
        ({"num_canaries": 1, "texts": "one document"}, "`texts` must be a sequence of str"),
        ({"num_canaries": 2, "texts": ["a b", None]}, "`texts` must be a sequence of str"),
        ({"num_canaries": 2, "vocabulary": "ab"}, "`vocabulary` must be a list of words"),
        ({"num_canaries": 2, "vocabulary": ["a", 3]}, "`vocabulary` must be a list of words"),
        ({"num_canaries": 2, "vocabulary": ["a", "a"]}, "at least 2 distinct words"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_canaries(**kwargs)


def test_numpy_integer_counts_are_integers():
    import numpy as np

    assert make_canaries(np.int64(3), num_words=np.int32(4)) == make_canaries(3, num_words=4)


def test_a_set_vocabulary_gives_the_same_canaries_in_every_process():
    code = (
        "from hf_ext.federated.memorization import make_canaries;"
        "print([c.text for c in make_canaries(3, vocabulary={'alpha','beta','gamma','delta','omega'}, num_words=6)])"
    )
    outs = set()
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        outs.add(
            subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        )
    assert len(outs) == 1, outs


def test_texts_as_numpy_array_or_pandas_series_are_accepted():
    """Any indexable collection of str works as before (the checks must not refuse a column's `.values`)."""
    import numpy as np
    import pandas as pd

    texts = ["alpha beta gamma", "delta epsilon zeta", "eta theta iota"]
    expected = make_canaries(3, texts=texts, num_words=2)
    assert make_canaries(3, texts=np.array(texts), num_words=2) == expected
    assert make_canaries(3, texts=pd.Series(texts), num_words=2) == expected
    words = ["red", "green", "blue", "cyan"]
    assert make_canaries(2, vocabulary=np.array(words), num_words=5) == make_canaries(2, vocabulary=words, num_words=5)
