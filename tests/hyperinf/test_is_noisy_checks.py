"""`roc_auc`, `recall_at_fraction` and `detection_curve` refuse an `is_noisy` that is not boolean or 0/1 by name.

They cast it with `astype(bool)`: -1/+1 labels counted as all noisy (`roc_auc` then refused with a misleading "must
contain both", `recall_at_fraction` returned the fraction itself), class ids passed by mistake gave AUC 1.0 silently, and
a NaN flag counted as noisy."""

import numpy as np
import pytest

from hf_ext.hyperinf import detection_curve, recall_at_fraction, roc_auc

_SCORES = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3])


@pytest.mark.parametrize(
    "labels, match",
    [
        ([1, 1, -1, -1, 1, -1], r"`is_noisy` must be boolean or 0/1.*got -1 at index 2"),  # -1/+1 labels
        ([2, 1, 0, 0, 2, 1], r"`is_noisy` must be boolean or 0/1.*got 2 at index 0"),  # class ids
        ([1, 1, 0, np.nan, 1, 0], r"`is_noisy` holds 1 NaN value\(s\) \(first at index 3\)"),
        ([0.0, 0.5, 1.0, 0.0, 1.0, 0.0], r"`is_noisy` must be boolean or 0/1.*got 0.5 at index 1"),
    ],
)
@pytest.mark.parametrize("metric", ["roc_auc", "recall_at_fraction", "detection_curve"])
def test_is_noisy_must_be_boolean_or_zero_one(labels, match, metric):
    call = {
        "roc_auc": lambda y: roc_auc(_SCORES, y),
        "recall_at_fraction": lambda y: recall_at_fraction(_SCORES, y, 0.5),
        "detection_curve": lambda y: detection_curve(_SCORES, y),
    }[metric]
    with pytest.raises(ValueError, match=match):
        call(labels)


def test_is_noisy_of_strings_is_refused_and_zero_one_numbers_equal_booleans():
    with pytest.raises(TypeError, match=r"`is_noisy` must be boolean or 0/1"):
        roc_auc(_SCORES, ["yes", "yes", "no", "no", "yes", "no"])
    flags = np.array([True, True, False, False, True, False])
    expected = roc_auc(_SCORES, flags)
    assert expected == 1.0
    for as_numbers in (flags.astype(int), flags.astype(np.float32), flags.astype(np.uint8).tolist()):
        assert roc_auc(_SCORES, as_numbers) == expected
        assert recall_at_fraction(_SCORES, as_numbers, 0.5) == recall_at_fraction(_SCORES, flags, 0.5)
