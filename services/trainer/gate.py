"""Held-out metrics of a model version and the gate a candidate passes before it is labelled.

Candidate and `stable` are scored on the same held-out rows (the most recent part of the window,
never trained on), so their figures compare like with like. The gate looks at two figures an
analyst feels: the classifier's macro-F1 (wrong protocols become `protocol-mismatch` alerts) and
the false-positive rate of `anomalous-bytes` alerts on normal rows. A candidate must clear the
absolute floors and must not be worse than `stable` by more than the margins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from headbits.common.settings import setting
from headbits.featurizer.bits import HeadBatch, ones_fraction
from headbits.scorer.backend import Scores
from headbits.trainer import accuracy
from headbits.trainer.dataset import OTHER, LabelledHeads
from headbits.trainer.evaluate import HeldOutScores, classifier_summary
from headbits.trainer.train import normal_rows

MACRO_F1 = "holdout_macro_f1"
FALSE_POSITIVE_RATE = "holdout_false_positive_rate"


@dataclass(frozen=True)
class GateSettings:
    min_macro_f1: float = setting(0.5, "a candidate's held-out macro-F1 must reach this")
    max_false_positive_rate: float = setting(
        0.05, "a candidate's held-out false-positive rate (anomalous-bytes alerts on normal "
        "rows, at its own thresholds) must not exceed this"
    )
    max_macro_f1_drop: float = setting(
        0.02, "a candidate's held-out macro-F1 may be this much below stable's (negative: it "
        "must beat stable by that much)"
    )
    max_fpr_increase: float = setting(
        0.005, "a candidate's held-out false-positive rate may be this much above stable's"
    )


def holdout_metrics(
    scores: Scores, batch: HeadBatch, holdout: LabelledHeads, baseline: tuple[str, ...]
) -> dict:
    """Flat figures of one version on the held-out rows (`scores` row-aligned with `holdout`).

    Macro-F1 is over the protocols that are the version's classes (a label it has no class for
    expects `other`). The false-positive rate counts `anomalous-bytes` alerts on the normal rows
    (the `baseline` protocols, or all rows). AUROCs are None where there is nothing to rank.
    """
    classes = scores.model.classes
    truth = np.array([label if label in classes else OTHER for label in holdout.labels],
                     dtype=object)
    predicted = np.array(scores.predicted_protocols(), dtype=object)
    ones = ones_fraction(batch)
    summary = classifier_summary(
        HeldOutScores(holdout, scores.reconstruction_error, predicted, truth, ones))
    normal = normal_rows(holdout, baseline)
    alerts = scores.is_anomalous()
    labels = holdout.label_array()
    # What the scorer calls a protocol-mismatch: a protocol the version knows, predicted otherwise.
    mismatched = np.isin(labels, [c for c in classes if c != OTHER]) & (predicted != labels)
    figures = {
        "holdout_rows": len(holdout),
        MACRO_F1: summary["macro_f1"],
        FALSE_POSITIVE_RATE: float(alerts[normal].mean()) if normal.any() else math.nan,
        "holdout_mismatch_rate": float(mismatched.mean()) if len(holdout) else math.nan,
        "holdout_protocol_auroc": protocol_auroc(scores.protocol_probs, truth, classes),
        "holdout_anomaly_auroc": accuracy.auroc(scores.reconstruction_error[normal],
                                               scores.reconstruction_error[~normal]),
        "holdout_ones_fraction_auroc": accuracy.either_way_auroc(
            accuracy.auroc(ones[normal], ones[~normal])),
    }
    return {name: _finite_or_none(value) for name, value in figures.items()}


def protocol_auroc(probabilities: np.ndarray, truth: np.ndarray, classes: tuple[str, ...]) -> float:
    """Mean one-vs-rest AUROC of each class's probability, over classes with rows on both sides."""
    values = []
    for index, name in enumerate(classes):
        positive = truth == name
        if name != OTHER and positive.any() and not positive.all():
            values.append(accuracy.auroc(probabilities[~positive, index],
                                        probabilities[positive, index]))
    return float(np.mean(values)) if values else math.nan


def gate_failures(candidate: dict, stable: dict | None, rules: GateSettings) -> list[str]:
    """Why the candidate must not be labelled, each reason naming its metric; [] = it passes."""
    failures = []
    f1, fpr = candidate[MACRO_F1], candidate[FALSE_POSITIVE_RATE]
    if f1 is None or f1 < rules.min_macro_f1:
        failures.append(f"{MACRO_F1} {_shown(f1)} is below min_macro_f1 {rules.min_macro_f1:g}")
    if fpr is None or fpr > rules.max_false_positive_rate:
        failures.append(f"{FALSE_POSITIVE_RATE} {_shown(fpr)} is above max_false_positive_rate "
                        f"{rules.max_false_positive_rate:g}")
    if stable is None:
        return failures
    if None not in (f1, stable[MACRO_F1]) and f1 < stable[MACRO_F1] - rules.max_macro_f1_drop:
        failures.append(f"{MACRO_F1} {_shown(f1)} is worse than stable's {_shown(stable[MACRO_F1])}"
                        f" by more than max_macro_f1_drop {rules.max_macro_f1_drop:g}")
    if None not in (fpr, stable[FALSE_POSITIVE_RATE]) and (
            fpr > stable[FALSE_POSITIVE_RATE] + rules.max_fpr_increase):
        failures.append(f"{FALSE_POSITIVE_RATE} {_shown(fpr)} is worse than stable's "
                        f"{_shown(stable[FALSE_POSITIVE_RATE])} by more than max_fpr_increase "
                        f"{rules.max_fpr_increase:g}")
    return failures


def failing_metrics(failures: list[str]) -> list[str]:
    """The metric names the gate's reasons start with, once each."""
    return list(dict.fromkeys(reason.split(" ", 1)[0] for reason in failures))


def _finite_or_none(value: float | int) -> float | int | None:
    """JSON has no NaN: a figure that cannot be computed is null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
