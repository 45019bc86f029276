"""Pass 34 (lead): `add_influence_column` refuses a 2-D scores array instead of flattening it."""

import numpy as np
import pytest
from datasets import Dataset

from hf_ext.hyperinf import add_influence_column


def test_a_two_dimensional_scores_array_is_refused_even_when_its_size_matches():
    dataset = Dataset.from_dict({"text": [f"t{i}" for i in range(6)]})
    # 2 evaluation sets x 3 ... flattened, 6 values would have matched the 6 rows and been written silently
    with pytest.raises(ValueError, match=r"one score per row.*shape \(2, 3\).*scores.mean\(axis=0\)"):
        add_influence_column(dataset, np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("shape", [(6,), (6, 1), (1, 6), (1, 6, 1)])
def test_one_score_per_row_in_any_singleton_shape_is_accepted(shape):
    dataset = Dataset.from_dict({"text": [f"t{i}" for i in range(6)]})
    out = add_influence_column(dataset, np.arange(6.0).reshape(shape))
    assert out["influence"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
