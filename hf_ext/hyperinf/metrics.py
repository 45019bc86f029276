"""Evaluation helpers: mislabeled-data detection (recall at k, ROC-AUC), data selection, and peak-memory measurement."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from ..utils.checks import is_real, python_scalar


def _scores_1d(scores) -> np.ndarray:
    """`scores` as a flat float64 array, refused (naming it) when it has more than one axis longer than 1: a matrix of
    scores (one row per evaluation example, or per method) was flattened, so `select_lowest_influence` returned
    positions in the flattened matrix, beyond the training set, and the metrics mixed the rows."""
    values = np.asarray(scores, dtype=np.float64)
    if sum(size != 1 for size in values.shape) > 1:
        raise ValueError(
            f"`scores` must hold one score per training example (1-D), got shape {values.shape}; for scores against "
            "several evaluation sets, rank each row on its own (or their mean, `scores.mean(axis=0)`)."
        )
    return values.reshape(-1)


def _check_scores_labels(scores, is_noisy) -> tuple[np.ndarray, np.ndarray]:
    scores = _scores_1d(scores)
    is_noisy = _check_is_noisy(is_noisy)
    if scores.shape != is_noisy.shape:
        raise ValueError(f"`scores` ({scores.shape[0]}) and `is_noisy` ({is_noisy.shape[0]}) differ in length.")
    if scores.size == 0:
        raise ValueError("`scores` is empty.")
    _check_finite(scores)
    return scores, is_noisy


def _check_is_noisy(is_noisy) -> np.ndarray:
    """`is_noisy` as a flat bool array, refused (naming it) unless it is boolean or numeric 0/1 without NaN: a cast
    with `astype(bool)` read {-1, 1} labels, or class ids passed by mistake, as all noisy, and NaN as noisy."""
    values = np.asarray(is_noisy).reshape(-1)
    if values.dtype == bool:
        return values
    if values.dtype.kind not in "iuf":
        raise TypeError(
            f"`is_noisy` must be boolean or 0/1 (1 = noisy), got an array of dtype {values.dtype}; pass a boolean "
            "mask of the noisy examples."
        )
    missing = np.flatnonzero(np.isnan(values)) if values.dtype.kind == "f" else np.empty(0, dtype=int)
    if missing.size:
        raise ValueError(
            f"`is_noisy` holds {missing.size} NaN value(s) (first at index {int(missing[0])}); mark every example "
            "noisy (True / 1) or clean (False / 0)."
        )
    other = np.flatnonzero((values != 0) & (values != 1))
    if other.size:
        raise ValueError(
            f"`is_noisy` must be boolean or 0/1 (1 = noisy), got {values[other[0]].item()!r} at index {int(other[0])} "
            f"(values {np.unique(values)[:6].tolist()}); pass a boolean mask of the noisy examples, e.g. "
            "`labels != clean_labels` (not the labels themselves, nor -1/+1 labels)."
        )
    return values.astype(bool)


def _check_finite(scores: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(
            f"`scores` holds {bad.size} NaN or infinite value(s) (first at index {int(bad[0])}), which cannot be "
            "ranked; recompute them (a diverged or unconverged inverse, e.g. the reference's Schulz start on a large "
            "matrix, gives such scores)."
        )


def _check_fractions(fractions, name: str) -> np.ndarray:
    """`fractions` as float64, refused (naming `name`) when a value is NaN or outside [0, 1]."""
    values = np.asarray(fractions, dtype=np.float64)
    bad = np.flatnonzero(~((values >= 0.0) & (values <= 1.0)))  # NaN fails both comparisons
    if bad.size:
        value = float(values.reshape(-1)[bad[0]])
        where = f" (index {int(bad[0])})" if values.ndim else ""
        raise ValueError(f"`{name}` must be in [0, 1], got {value!r}{where}.")
    return values


def detection_curve(scores, is_noisy, fractions=None) -> tuple[np.ndarray, np.ndarray]:
    """Share of noisy examples found when inspecting the highest-influence fraction of the training set.

    Args:
        scores (`array-like`): influence per training example (positive = harmful).
        is_noisy (`array-like` of `bool`): which examples are mislabeled (boolean, or numbers 0/1; other values, NaN
            included, are refused).
        fractions (`array-like`, *optional*): inspected fractions, each in [0, 1]; default 0, 0.01, ..., 1.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: the fractions and the recall (found noisy / all noisy) at each.

    Tied scores are ranked fairly: the recall is its expectation over a uniformly random order within each group of
    tied scores, so a group of `g` tied examples holding `p` noisy ones that is cut after `m` of its members counts
    `m * p / g` noisy examples found (the index order of the examples never matters; a constant detector gets
    recall = fraction).
    """
    scores, is_noisy = _check_scores_labels(scores, is_noisy)
    fractions = np.linspace(0.0, 1.0, 101) if fractions is None else _check_fractions(fractions, "fractions")
    if not is_noisy.any():
        raise ValueError("`is_noisy` marks no example as noisy; recall is undefined.")
    # groups of tied scores, highest first; found noisy examples at each group boundary, linear within a group
    _, inverse = np.unique(-scores, return_inverse=True)
    group_size = np.bincount(inverse)
    group_noisy = np.bincount(inverse, weights=is_noisy.astype(np.float64))
    boundaries = np.concatenate([[0], np.cumsum(group_size)])
    found = np.concatenate([[0.0], np.cumsum(group_noisy)])
    counts = np.round(fractions * scores.size).astype(int)
    return fractions, np.interp(counts, boundaries, found) / is_noisy.sum()


def recall_at_fraction(scores, is_noisy, fraction: float = 0.2) -> float:
    """Recall of mislabeled examples among the top `fraction` of the training set by influence (descending).

    Ties are ranked fairly (the expected recall over a random order of tied scores, see `detection_curve`).
    """
    if np.ndim(fraction) != 0:  # a list failed inside float() ("only 0-dimensional arrays can be converted")
        raise TypeError(
            f"`fraction` must be one number in [0, 1], got {fraction!r}; for several fractions use "
            "`detection_curve(scores, is_noisy, fractions)`."
        )
    _check_fractions(fraction, "fraction")
    return float(detection_curve(scores, is_noisy, [fraction])[1][0])


def roc_auc(scores, is_noisy) -> float:
    """ROC-AUC of `scores` as a detector of `is_noisy` (Mann-Whitney statistic with average ranks for ties)."""
    scores, is_noisy = _check_scores_labels(scores, is_noisy)
    n_pos, n_neg = int(is_noisy.sum()), int((~is_noisy).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("`is_noisy` must contain both noisy and clean examples for an AUC.")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties averaged
    return float((ranks[is_noisy].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def select_lowest_influence(scores, fraction: float, groups=None) -> np.ndarray:
    """Indices (sorted) of the `fraction` of training examples with the lowest (most helpful) influence.

    Args:
        scores (`array-like`): influence per training example.
        fraction (`float`): share to keep, in (0, 1].
        groups (`array-like`, *optional*): a group id per example (e.g. the training label). When given, the lowest
            `fraction` is kept *within each group*, so selection cannot shift the group proportions: influence on the
            mean validation loss otherwise tends to drop the class under-represented in the validation set. A NaN
            id (a missing label) is refused: it equals no id, not even another NaN, so its example could not be kept.

    Each group (or the whole set) keeps `max(1, round(fraction * size))` examples (Python's `round`, half to even);
    tied scores are kept in dataset order (a stable sort), so the result is deterministic.
    """
    scores = _scores_1d(scores)
    fraction = python_scalar(fraction)  # numpy numbers and 0-d tensors too
    if not is_real(fraction) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"`fraction` must be a number in (0, 1], got {fraction!r}.")
    if scores.size == 0:
        raise ValueError("`scores` is empty.")
    _check_finite(scores)
    if groups is None:
        keep = max(1, int(round(fraction * scores.size)))
        return np.sort(np.argsort(scores, kind="stable")[:keep])
    groups = np.asarray(groups)
    if sum(size != 1 for size in groups.shape) > 1:
        raise ValueError(f"`groups` must hold one group id per training example (1-D), got shape {groups.shape}.")
    groups = groups.reshape(-1)
    if groups.shape != scores.shape:
        raise ValueError(f"`groups` ({groups.shape[0]}) and `scores` ({scores.shape[0]}) differ in length.")
    missing = np.flatnonzero(groups != groups)  # NaN ids (float or object arrays)
    if missing.size:
        raise ValueError(
            f"`groups` holds {missing.size} NaN id(s) (first at index {int(missing[0])}), which match no group, so "
            "those examples would never be kept; give each example a group id (e.g. fill missing labels with an id "
            "of their own)."
        )
    kept = []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        keep = max(1, int(round(fraction * members.size)))
        kept.append(members[np.argsort(scores[members], kind="stable")[:keep]])
    return np.sort(np.concatenate(kept))


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc only) so that RSS deltas reflect new allocations."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory used inside a `with` block.

    On CUDA it reads `torch.cuda.max_memory_allocated` (after a reset), so the value is the peak of tensor memory
    above what was allocated at entry. On CPU it samples the process's resident set size every `interval` seconds
    and reports the peak above the value at entry (after returning freed heap pages to the OS where glibc allows);
    CPU values are approximate (sampling, allocator caching) and measure the block's *additional* footprint.

    Attributes after the block: `peak_bytes` (`int`), `device` (`str`), `seconds` (`float`).
    """

    def __init__(self, device=None, interval: float = 0.002):
        import torch

        value = python_scalar(interval)
        if not is_real(value) or not 0 < value < float("inf"):
            # 0 made the sampling thread spin; a negative value made `time.sleep` raise in the thread, which died
            # and left the peak to the samples at entry and exit
            raise ValueError(
                f"`interval` must be a finite positive number of seconds between memory samples (e.g. the default "
                f"0.002), got {interval!r}."
            )
        interval = float(value)
        self.device = str(device) if device is not None else "cpu"
        self.cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        self.interval = interval
        self.peak_bytes = 0
        self.seconds = 0.0

    @staticmethod
    def _rss() -> int:
        try:
            import psutil

            return psutil.Process(os.getpid()).memory_info().rss
        except ImportError:  # pragma: no cover - psutil ships with most environments
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _release_freed_memory()
            self._start = self._rss()
            self._peak = self._start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device) - self._start)
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_bytes = int(self._peak - self._start)
        self.seconds = time.perf_counter() - self._t0
