"""Evaluation maths: ROC, AUROC, F1, confusion matrices and bootstrap intervals over groups.

Pure numpy, no model, so every figure in a report can be recomputed and property-tested.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half.

    The Mann-Whitney U statistic over average ranks: O(n log n) and exact with ties.
    """
    negatives = np.asarray(negatives, dtype=np.float64)
    positives = np.asarray(positives, dtype=np.float64)
    if len(negatives) == 0 or len(positives) == 0:
        return float("nan")
    scores = np.concatenate([negatives, positives])
    ranks = _average_ranks(scores)
    positive_rank_sum = ranks[len(negatives):].sum()
    u = positive_rank_sum - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(negatives) * len(positives)))


def either_way_auroc(value: float) -> float:
    """The AUROC of a detector that may rank either way round (a 1-bit counter has no sign),
    credited with the better direction."""
    return max(value, 1 - value)


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    average = (starts + ends + 1) / 2.0  # 1-based average rank of each tie block
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def roc_curve(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) at every distinct threshold, from (0,0)."""
    scores = np.concatenate([negatives, positives])
    is_positive = np.concatenate([np.zeros(len(negatives)), np.ones(len(positives))])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], is_positive[order]
    last_of_block = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(is_positive)[last_of_block]
    false_positives = (last_of_block + 1) - true_positives
    tpr = np.r_[0.0, true_positives / max(len(positives), 1)]
    fpr = np.r_[0.0, false_positives / max(len(negatives), 1)]
    return fpr, tpr


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """int [C, C]: rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def per_class_f1(matrix: np.ndarray) -> np.ndarray:
    """F1 per class from a confusion matrix; NaN for a class with no true and no predicted row."""
    true_positives = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * true_positives / denominator, np.nan)


def macro_f1(matrix: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Mean F1 over the classes that occur in the truth (or the given ones)."""
    scores = per_class_f1(matrix)
    present = np.flatnonzero(matrix.sum(axis=1) > 0) if classes is None else np.asarray(classes)
    return float(np.nanmean(scores[present])) if len(present) else float("nan")


def bootstrap_interval(
    groups: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    repetitions: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of `statistic(rows)` when whole groups (capture files) are resampled.

    Flows of one capture are near-duplicates, so resampling flows would understate the spread;
    resampling files does not. `statistic` receives row indices (with repeats).
    """
    names, group_of_row = np.unique(groups, return_inverse=True)
    rows_of_group = [np.flatnonzero(group_of_row == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(repetitions):
        chosen = rng.integers(0, len(names), len(names))
        value = statistic(np.concatenate([rows_of_group[g] for g in chosen]))
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
