"""Evaluation maths against brute-force definitions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from headbits.trainer import accuracy

scores = st.lists(st.integers(0, 6).map(float), min_size=1, max_size=40)


def brute_force_auroc(negatives: list[float], positives: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(negatives) * len(positives))


@given(scores, scores)
def test_auroc_equals_pairwise_definition_with_ties(negatives, positives):
    assert np.isclose(accuracy.auroc(np.array(negatives), np.array(positives)),
                      brute_force_auroc(negatives, positives))


@given(scores, scores)
def test_roc_curve_area_equals_auroc(negatives, positives):
    fpr, tpr = accuracy.roc_curve(np.array(negatives), np.array(positives))
    assert fpr[0] == 0 and tpr[0] == 0 and np.isclose(fpr[-1], 1) and np.isclose(tpr[-1], 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = np.trapezoid(tpr, fpr)
    assert np.isclose(area, accuracy.auroc(np.array(negatives), np.array(positives)))


def test_auroc_of_empty_side_is_nan():
    assert np.isnan(accuracy.auroc(np.array([]), np.array([1.0])))


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_confusion_and_f1_match_counting(pairs):
    truth = np.array([t for t, _ in pairs])
    predicted = np.array([p for _, p in pairs])
    matrix = accuracy.confusion_matrix(truth, predicted, 4)
    assert matrix.sum() == len(pairs)
    f1 = accuracy.per_class_f1(matrix)
    for c in range(4):
        tp = np.sum((truth == c) & (predicted == c))
        fp = np.sum((truth != c) & (predicted == c))
        fn = np.sum((truth == c) & (predicted != c))
        if tp + fp + fn == 0:
            assert np.isnan(f1[c])
        else:
            assert np.isclose(f1[c], 2 * tp / (2 * tp + fp + fn))
    present = sorted(set(truth.tolist()))
    assert np.isclose(accuracy.macro_f1(matrix), np.nanmean(f1[present]))


def test_bootstrap_interval_resamples_whole_groups():
    # Group "a" is all ones and group "b" all zeros: any resample of whole groups has a mean of
    # 0, 0.5 or 1 exactly; resampling rows would give values in between.
    groups = np.array(["a"] * 10 + ["b"] * 30)
    values = np.array([1.0] * 10 + [0.0] * 30)
    seen = set()

    def mean_by_group(rows: np.ndarray) -> float:
        picked_groups = groups[rows]
        value = np.mean([values[rows][picked_groups == g].mean() for g in set(picked_groups)])
        seen.add(round(float(value), 6))
        return float(value)

    low, high = accuracy.bootstrap_interval(groups, mean_by_group, repetitions=100, seed=1)
    assert seen <= {0.0, 0.5, 1.0}
    assert 0.0 <= low <= high <= 1.0
