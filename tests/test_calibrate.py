"""Properties of threshold calibration, against a sort-based reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from headbits.trainer.calibrate import (
    bit_weights,
    class_thresholds,
    has_own_threshold,
    tail_calibration,
    threshold_at_fpr,
)

# Few distinct values, so ties (common for errors of identical heads) are exercised.
errors_strategy = arrays(
    np.float32, st.integers(1, 400),
    elements=st.sampled_from([0.0, 0.001, 0.02, 0.02, 0.3, 0.3, 0.3, 1.5, 7.0]) | st.floats(
        0, 20, width=32),
)
fpr_strategy = st.floats(1e-4, 0.5)
# On a loaded machine a first call can outlast Hypothesis's 200 ms deadline for reasons that have
# nothing to do with the code (Hypothesis then reports a flaky failure): no deadline here.
unhurried = settings(deadline=None)


def reference_threshold(errors: np.ndarray, target_fpr: float) -> float:
    ranked = sorted(errors.tolist(), reverse=True)
    return ranked[math.floor(target_fpr * len(ranked))]


@unhurried
@given(errors_strategy, fpr_strategy)
def test_achieved_rate_is_at_most_the_target(errors, target_fpr):
    threshold = threshold_at_fpr(errors, target_fpr)
    assert np.mean(errors > threshold) <= target_fpr


@unhurried
@given(errors_strategy, fpr_strategy)
def test_threshold_is_the_lowest_that_keeps_the_rate(errors, target_fpr):
    """It is a held-out error, and lowering it to the next smaller one would break the rate."""
    threshold = threshold_at_fpr(errors, target_fpr)
    assert threshold in errors.tolist()
    assert threshold == reference_threshold(errors, target_fpr)
    assert np.sum(errors >= threshold) > math.floor(target_fpr * errors.size)


@unhurried
@given(errors_strategy, fpr_strategy, fpr_strategy)
def test_threshold_falls_as_the_target_rises(errors, first, second):
    low, high = sorted((first, second))
    assert threshold_at_fpr(errors, low) >= threshold_at_fpr(errors, high)


@unhurried
@given(errors_strategy, fpr_strategy)
def test_fewer_rows_than_one_over_target_give_the_maximum(errors, target_fpr):
    if errors.size * target_fpr < 1:
        assert threshold_at_fpr(errors, target_fpr) == errors.max()


@unhurried
@given(
    st.integers(1, 5).flatmap(lambda classes: st.tuples(
        st.just(classes),
        arrays(np.float32, st.integers(1, 300), elements=st.floats(0, 10, width=32)),
        st.randoms(use_true_random=False),
    )),
    fpr_strategy,
    st.integers(0, 80),
)
def test_class_thresholds_per_class_or_global(case, target_fpr, min_rows):
    n_classes, errors, random = case
    predicted = np.array([random.randrange(n_classes) for _ in errors], dtype=np.int64)
    thresholds = class_thresholds(errors, predicted, n_classes, target_fpr, min_rows)
    assert thresholds.dtype == np.float32 and thresholds.shape == (n_classes,)
    counts = np.bincount(predicted, minlength=n_classes)
    own = has_own_threshold(counts, min_rows)
    np.testing.assert_array_equal(own, counts >= max(min_rows, 1))
    global_threshold = threshold_at_fpr(errors, target_fpr)
    for cls in range(n_classes):
        rows = errors[predicted == cls]
        if own[cls]:
            assert thresholds[cls] == threshold_at_fpr(rows, target_fpr)
            assert np.mean(rows > thresholds[cls]) <= target_fpr
        else:
            assert thresholds[cls] == np.float32(global_threshold)


@unhurried
@given(arrays(np.float64, st.integers(1, 200), elements=st.floats(0, 10)), fpr_strategy)
def test_float32_thresholds_never_flag_more_rows(errors, target_fpr):
    """Thresholds round up to float32, so the model's float32 comparison keeps the rate."""
    thresholds = class_thresholds(errors, np.zeros(errors.size, np.int64), 1, target_fpr, 1)
    assert np.mean(errors.astype(np.float32) > thresholds[0]) <= target_fpr
    assert thresholds[0] >= threshold_at_fpr(errors, target_fpr)


@pytest.mark.parametrize(
    ("errors", "target_fpr", "message"),
    [
        (np.array([]), 0.01, "no held-out errors"),
        (np.array([0.1, np.nan]), 0.01, "NaN"),
        (np.array([0.1]), 0.0, "not in"),
        (np.array([0.1]), 1.0, "not in"),
    ],
)
def test_bad_calibration_input_is_refused(errors, target_fpr, message):
    with pytest.raises(ValueError, match=message):
        threshold_at_fpr(errors, target_fpr)


def test_predictions_must_match_errors_and_classes():
    with pytest.raises(ValueError, match="predicted classes"):
        class_thresholds(np.ones(3), np.array([0, 1]), 2, 0.01, 1)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        class_thresholds(np.ones(2), np.array([0, 2]), 2, 0.01, 1)


def test_bit_weights_run_from_fixed_to_coin_toss():
    """Loss 0 (always predicted) weighs 1, ln 2 (a fair coin) or worse weighs 0, unseen weighs 1."""
    rows = np.array([10.0, 10.0, 10.0, 10.0, 0.0])
    losses = np.array([0.0, 0.5 * math.log(2), math.log(2), 3.0, 0.0]) * rows
    np.testing.assert_allclose(bit_weights(losses, rows), [1.0, 0.5, 0.0, 0.0, 1.0], atol=1e-6)
    assert bit_weights(losses, rows).dtype == np.float32


@unhurried
@given(arrays(np.float64, 16, elements=st.floats(0, 50)), arrays(np.int64, 16,
                                                                 elements=st.integers(0, 100)))
def test_bit_weights_lie_in_the_unit_interval(losses, counts):
    weights = bit_weights(losses, counts)
    assert np.all((weights >= 0) & (weights <= 1))


def test_bad_bit_weight_input_is_refused():
    with pytest.raises(ValueError, match="loss sums"):
        bit_weights(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="non-negative"):
        bit_weights(-np.ones(2), np.ones(2))


# Novelty scores are float32 distances; keys add a segment index to s / (1 + s) in float64, which
# resolves every float32 score in this range (scores below it compare as equal).
scores_strategy = st.floats(0.125, 1e5, width=32) | st.sampled_from([0.0, 1.0, 2.5])


@unhurried
@given(st.lists(scores_strategy, min_size=1, max_size=300),
       st.lists(scores_strategy, min_size=1, max_size=50),
       st.integers(1, 3), st.integers(1, 50))
def test_tail_probability_counts_held_out_scores_at_least_as_high(calibration, new, classes,
                                                                  min_rows):
    predicted = np.arange(len(calibration)) % classes
    tails = tail_calibration(np.array(calibration), predicted, classes, min_rows)
    new_class = np.arange(len(new)) % classes
    found = tails.tail_probability(np.array(new), new_class)
    for value, cls, tail in zip(new, new_class, found, strict=True):
        own = np.array(calibration)[predicted == cls]
        reference = own if len(own) >= min_rows else np.array(calibration)
        expected = ((reference >= value).sum() + 1) / (len(reference) + 1)
        assert tail == pytest.approx(expected, rel=1e-6)


def test_tail_calibration_refuses_bad_scores():
    with pytest.raises(ValueError, match="no held-out"):
        tail_calibration(np.array([]), np.array([], int), 2, 1)
    with pytest.raises(ValueError, match="non-negative"):
        tail_calibration(np.array([-1.0]), np.array([0]), 2, 1)
