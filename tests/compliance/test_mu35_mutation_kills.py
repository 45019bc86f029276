"""mu35 mutation run: pins for the cp35 score-reading change."""

import pytest

from hf_ext.compliance import compute_dcg


@pytest.mark.parametrize("value", [True, False, 1 + 0j, "0.5", None])
def test_a_bool_a_complex_or_a_non_number_is_no_score(value):
    """numbers.Real admits NumPy scores; a Python bool (an int subclass) and a complex number stay refused by name."""
    with pytest.raises(ValueError, match=r"\['a'\] must be a finite number, got "):
        compute_dcg({"a": value}, {"a": 0.5})
    with pytest.raises(ValueError, match=r"\['a'\] must be a finite number, got "):
        compute_dcg({"a": 0.5}, {"a": value})
