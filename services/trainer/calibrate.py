"""Anomaly thresholds and tail probabilities from held-out normal traffic.

A row is anomalous when its reconstruction error is strictly greater than the threshold, so the
threshold at FPR `f` over `m` held-out errors is the `(k+1)`-th largest error with `k = floor(f*m)`:
at most `k` of those rows lie above it. Fewer held-out rows than `1/f` leave `k = 0`, and the
threshold degenerates to the largest held-out error; that is why a class needs `min_rows` rows of
its own before it gets its own threshold instead of the global one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class TailCalibration:
    """Held-out normal novelty scores, laid out for a lookup inside the model's graph.

    Scores are grouped in segments: one per class with `min_rows` held-out rows predicted as it,
    and a last one (index C) holding every row, for the other classes. `keys` is sorted and
    holds `segment + unit_interval(score)` for each score of each segment, so one sorted search
    finds how many of a segment's scores lie below a value; `segment_end[s]` is the index after
    segment s's last key and `segment_size[s]` its count.
    """

    segment_of_class: np.ndarray  # int32 [C]
    keys: np.ndarray  # float64 [M]
    segment_end: np.ndarray  # int32 [C + 1]
    segment_size: np.ndarray  # int32 [C + 1]

    def tail_probability(self, scores: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """The graph's lookup in numpy: (#{segment scores >= s} + 1) / (segment size + 1)."""
        segment = self.segment_of_class[np.asarray(predicted)]
        keys = segment + unit_interval(np.asarray(scores, dtype=np.float64))
        at_least = self.segment_end[segment] - np.searchsorted(self.keys, keys, side="left")
        return ((at_least + 1) / (self.segment_size[segment] + 1)).astype(np.float32)


def unit_interval(scores: np.ndarray) -> np.ndarray:
    """Non-negative scores mapped monotonically into [0, 1), so a segment index can be added."""
    scores = np.maximum(np.asarray(scores, dtype=np.float64), 0.0)
    return scores / (1.0 + scores)


def tail_calibration(
    scores: np.ndarray, predicted: np.ndarray, n_classes: int, min_rows: int,
) -> TailCalibration:
    """Split-conformal calibration of the novelty score on held-out normal rows.

    The tail probability of a new row is the share of held-out normal rows of its predicted
    class (of all classes, where that class has fewer than `min_rows`) scoring at least as high,
    +1 in numerator and denominator: a valid p-value when the new row is exchangeable with them,
    so alerting at tail <= r flags at most about r of such normal traffic. Rows must come from
    capture groups the model never trained on; training rows score lower than new traffic does.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    predicted = np.asarray(predicted).ravel()
    if scores.size == 0:
        raise ValueError("no held-out normal scores to calibrate tail probabilities on")
    if scores.shape != predicted.shape:
        raise ValueError(f"{scores.size} scores but {predicted.size} predicted classes")
    if not np.all(np.isfinite(scores)) or np.any(scores < 0):
        raise ValueError("novelty scores must be finite and non-negative")
    own = has_own_threshold(np.bincount(predicted, minlength=n_classes), min_rows)
    segment_of_class = np.where(own, np.arange(n_classes), n_classes).astype(np.int32)
    segments = [scores[predicted == cls] if own[cls] else np.empty(0)
                for cls in range(n_classes)] + [scores]
    keys = np.concatenate([index + np.sort(unit_interval(values))
                           for index, values in enumerate(segments)])
    sizes = np.array([len(values) for values in segments], dtype=np.int32)
    return TailCalibration(segment_of_class, keys, np.cumsum(sizes).astype(np.int32), sizes)
