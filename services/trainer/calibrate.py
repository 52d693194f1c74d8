"""Anomaly thresholds from held-out normal traffic, set to a target false-positive rate.

A row is anomalous when its reconstruction error is strictly greater than the threshold, so the
threshold at FPR `f` over `m` held-out errors is the `(k+1)`-th largest error with `k = floor(f*m)`:
at most `k` of those rows lie above it. Fewer held-out rows than `1/f` leave `k = 0`, and the
threshold degenerates to the largest held-out error; that is why a class needs `min_rows` rows of
its own before it gets its own threshold instead of the global one.
"""

from __future__ import annotations

import math

import numpy as np


def threshold_at_fpr(errors: np.ndarray, target_fpr: float) -> float:
    """The smallest held-out error with at most `target_fpr` of the rows strictly above it."""
    values = np.asarray(errors, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no held-out errors to calibrate a threshold on")
    if not np.all(np.isfinite(values)):
        raise ValueError("held-out errors contain NaN or infinity")
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target false-positive rate {target_fpr} is not in (0, 1)")
    allowed_above = math.floor(target_fpr * values.size)
    # partition is O(m): only the order statistic is needed, not a full sort.
    rank = values.size - 1 - allowed_above
    return float(np.partition(values, rank)[rank])


def class_thresholds(
    errors: np.ndarray,
    predicted: np.ndarray,
    n_classes: int,
    target_fpr: float,
    min_rows: int,
) -> np.ndarray:
    """float32 [C]: per predicted class where it has `min_rows` held-out rows, else the global one.

    Rows are grouped by the class the model *predicts* (that is what the scorer knows at serving
    time), not by their label.
    """
    errors = np.asarray(errors, dtype=np.float64).ravel()
    predicted = np.asarray(predicted).ravel()
    if errors.shape != predicted.shape:
        raise ValueError(f"{errors.size} errors but {predicted.size} predicted classes")
    if predicted.size and (predicted.min() < 0 or predicted.max() >= n_classes):
        raise ValueError(f"predicted classes must lie in 0..{n_classes - 1}")
    thresholds = np.full(n_classes, threshold_at_fpr(errors, target_fpr), dtype=np.float64)
    class_rows = np.bincount(predicted, minlength=n_classes)
    for cls in np.flatnonzero(has_own_threshold(class_rows, min_rows)):
        thresholds[cls] = threshold_at_fpr(errors[predicted == cls], target_fpr)
    return _float32_at_least(thresholds)


def has_own_threshold(class_rows: np.ndarray, min_rows: int) -> np.ndarray:
    """bool [C]: classes with enough held-out rows (`class_rows`) for a threshold of their own."""
    return np.asarray(class_rows) >= max(min_rows, 1)


def _float32_at_least(values: np.ndarray) -> np.ndarray:
    """Round up to float32, so that the model's float32 comparison flags no extra held-out row."""
    rounded = values.astype(np.float32)
    return np.where(rounded < values, np.nextafter(rounded, np.float32(np.inf)), rounded)


def bit_weights(loss_sums: np.ndarray, seen_counts: np.ndarray) -> np.ndarray:
    """float32 [bits]: how predictable each bit is in normal traffic, 1 (always) to 0 (a coin).

    `w = clip(1 - mean loss / ln 2, 0, 1)`: a bit the model predicts no better than a fair coin
    (a nonce, a transaction id, a length) carries no evidence about the protocol, so its error
    should not count towards an anomaly score. A bit normal traffic never showed keeps weight 1:
    nothing in normal traffic says it may be anything.
    """
    loss_sums = np.asarray(loss_sums, dtype=np.float64)
    seen_counts = np.asarray(seen_counts, dtype=np.float64)
    if loss_sums.shape != seen_counts.shape:
        raise ValueError(f"{loss_sums.shape} loss sums but {seen_counts.shape} counts")
    if np.any(seen_counts < 0) or np.any(loss_sums < 0):
        raise ValueError("loss sums and seen counts must be non-negative")
    mean_loss = np.divide(loss_sums, seen_counts, out=np.zeros_like(loss_sums),
                          where=seen_counts > 0)
    return np.clip(1.0 - mean_loss / math.log(2.0), 0.0, 1.0).astype(np.float32)
