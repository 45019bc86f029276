"""Ranking metrics with tied scores: the value is the expectation over a random order of the ties."""

import itertools

import numpy as np
import pytest

from hf_ext.hyperinf.metrics import detection_curve, recall_at_fraction, roc_auc


def _brute_force_recall(scores, is_noisy, fraction):
    """Average top-k recall over every permutation used as the tie-breaker (all tie orders, equally likely)."""
    scores, is_noisy = np.asarray(scores, dtype=float), np.asarray(is_noisy, dtype=bool)
    n = scores.size
    k = int(np.round(fraction * n))
    values = []
    for perm in itertools.permutations(range(n)):
        order = sorted(range(n), key=lambda i: (-scores[i], perm[i]))
        values.append(is_noisy[order[:k]].sum() / is_noisy.sum())
    return float(np.mean(values))


def test_constant_detector_recall_equals_fraction_whatever_the_index_order():
    first = [1, 1] + [0] * 8
    last = [0] * 8 + [1, 1]
    for labels in (first, last):
        assert recall_at_fraction(np.zeros(10), labels, 0.2) == pytest.approx(0.2, abs=1e-12)
        fractions, recall = detection_curve(np.zeros(10), labels, [0.0, 0.2, 0.5, 1.0])
        np.testing.assert_allclose(recall, [0.0, 0.2, 0.5, 1.0], atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_recall_with_ties_matches_brute_force_over_tie_orders(seed):
    rng = np.random.default_rng(seed)
    n = 7
    scores = rng.integers(0, 3, size=n).astype(float)  # many ties
    labels = rng.random(n) < 0.4
    labels[rng.integers(n)] = True
    for fraction in (0.15, 0.3, 0.45, 0.6, 0.9):
        expected = _brute_force_recall(scores, labels, fraction)
        assert recall_at_fraction(scores, labels, fraction) == pytest.approx(expected, abs=1e-12)
        # the value does not depend on where the examples sit
        perm = rng.permutation(n)
        assert recall_at_fraction(scores[perm], labels[perm], fraction) == pytest.approx(expected, abs=1e-12)


def test_recall_without_ties_is_the_plain_top_k_count():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.3])
    labels = np.array([1, 0, 1, 0, 0])
    assert recall_at_fraction(scores, labels, 0.4) == 1.0
    assert recall_at_fraction(scores, labels, 0.2) == 0.5
    assert recall_at_fraction(-scores, labels, 0.6) == 0.0


def test_roc_auc_with_ties_matches_brute_force_over_tie_orders():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 2, size=6).astype(float)
    labels = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    # the tie-averaged AUC is the pairwise statistic counting a tied (noisy, clean) pair as 1/2
    pairs = [(a, b) for a in scores[labels] for b in scores[~labels]]
    expected = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert roc_auc(np.zeros(6), labels) == pytest.approx(0.5, abs=1e-12)
