"""Mutation pass mu44: tests that kill surviving mutants of NeuralGrokTrainer._check_outer_token_ids (pass 37)."""

import pytest

from hf_ext.neuralgrok import build_arithmetic_dataset, split_arithmetic_dataset

from .test_lf43_fixes import _trainer


def _outer_rows():
    return [
        dict(row) for row in split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)["outer"]
    ]


def _as(form, rows):
    if form == "list":
        return rows
    from datasets import Dataset

    return Dataset.from_list(rows)


@pytest.mark.parametrize("form", ["dataset", "list"])
def test_an_outer_id_equal_to_the_vocabulary_size_is_refused(tmp_path, form):
    # the model's vocabulary is [0, 13): id 13 has no embedding row (an IndexError at the first outer step)
    rows = _outer_rows()
    rows[2]["input_ids"] = [*rows[2]["input_ids"][:-1], 13]
    with pytest.raises(ValueError, match=r"vocabulary \[0, 13\) \(ids from \d+ to 13; first in row 2\)"):
        _trainer(tmp_path, _as(form, rows))
    rows[2]["input_ids"][-1] = 12  # the largest id the vocabulary holds is taken
    _trainer(tmp_path, _as(form, rows))


def test_a_negative_outer_id_in_a_dataset_is_refused(tmp_path):
    rows = _outer_rows()
    rows[1]["input_ids"] = [-1, *rows[1]["input_ids"][1:]]
    with pytest.raises(ValueError, match=r"ids from -1 .*first in row 1"):
        _trainer(tmp_path, _as("dataset", rows))
