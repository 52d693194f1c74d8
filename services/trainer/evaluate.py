"""Evaluate the method on labelled captures, honestly: split by capture file, never by row.

Cross-validation over capture files: for each fold, a model is trained on generated traffic plus
the captures of the other folds (its autoencoder learns only the --baseline protocol, as in the
capstone) and scores the captures it never saw. From the pooled held-out scores it reports, per
N: the AUROC of baseline vs each other protocol with a bootstrap interval over files, next to the
"fraction of 1-bits" detector that any real detector must beat; the classifier's macro-F1 and
confusion matrix, next to a plain linear softmax on bits + mask trained on the same split (the
reference the classifier must beat); error histograms and ROC curves as PNG; one Markdown report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from headbits.common.protocols import UNKNOWN
from headbits.common.settings import add_settings_arguments, setting, settings_from_args
from headbits.featurizer.bits import ones_fraction
from headbits.scorer.backend import Scores
from headbits.trainer import accuracy, dataset, report
from headbits.trainer.dataset import OTHER, LabelledHeads
from headbits.trainer.reference import train_linear_reference
from headbits.trainer.train import (
    TrainSettings,
    add_data_arguments,
    fit,
    load_captured_data,
    load_made_data,
)

MIN_PAIR_ROWS = 10


@dataclass(frozen=True)
class EvalSettings:
    n_values: tuple[int, ...] = setting((8, 16, 32), "payload bytes per direction to evaluate")
    baseline: str = setting("tls", "the protocol the autoencoder learns (the capstone's TLS)")
    folds: int = setting(3, "cross-validation folds over capture files")
    min_class_rows: int = setting(20, "training rows a protocol needs to become a class")
    max_epochs: int = setting(60, "upper bound on epochs per fold (early stopping ends sooner)")
    bootstrap: int = setting(200, "bootstrap repetitions over files for the intervals")
    out_dir: Path = setting(Path("report"), "where the report, plots and metrics.json go")
    seed: int = setting(0, "seed for the folds and the models")


@dataclass
class HeldOutScores:
    """Every evaluated row's held-out scores, pooled over folds (row-aligned with `data`)."""

    data: LabelledHeads
    reconstruction_error: np.ndarray
    predicted: np.ndarray
    truth_class: np.ndarray
    ones: np.ndarray
    classes_per_fold: list[tuple[str, ...]] = field(default_factory=list)
    linear_predicted: np.ndarray | None = None  # the linear reference's classes, same rows
    alert_margin: np.ndarray | None = None  # the scorer's alert rule as a score, see below


def alert_margin(scores: Scores, claimed: str) -> np.ndarray:
    """float [B]: how far each row is past the scorer's alert rule for a flow claiming `claimed`.

    The scorer alerts when error > threshold or when another protocol is more probable than the
    claimed one; max(error / threshold, max other probability / claimed probability) exceeds 1
    exactly when it alerts, so its AUROC measures the whole detector, not the autoencoder alone.
    """
    claimed_index = scores.model.classes.index(claimed)
    probs = scores.protocol_probs.astype(np.float64)
    others = np.delete(probs, claimed_index, axis=1).max(axis=1)
    mismatch = others / np.maximum(probs[:, claimed_index], 1e-12)
    anomaly = scores.reconstruction_error / np.maximum(scores.threshold, 1e-12)
    return np.maximum(anomaly, mismatch)


def cross_validate(
    train_only: LabelledHeads, evaluated: LabelledHeads, n: int, settings: EvalSettings,
    progress: bool = True,
) -> HeldOutScores:
    fold_of_row = dataset.group_fold(evaluated.groups, settings.folds, settings.seed)
    errors = np.full(len(evaluated), np.nan, dtype=np.float32)
    predicted = np.empty(len(evaluated), dtype=object)
    linear_predicted = np.empty(len(evaluated), dtype=object)
    truth = np.empty(len(evaluated), dtype=object)
    margins = np.full(len(evaluated), np.nan, dtype=np.float64)
    classes_per_fold = []
    train_settings = TrainSettings(
        n=n, baseline=(settings.baseline,), min_class_rows=settings.min_class_rows,
        max_epochs=settings.max_epochs, seed=settings.seed,
    )
    for fold in tqdm(range(settings.folds), desc=f"N={n} folds", disable=not progress):
        held_out = np.flatnonzero(fold_of_row == fold)
        training = LabelledHeads().extend(train_only).extend(
            evaluated.subset(np.flatnonzero(fold_of_row != fold)))
        trained, train_rows, validation_rows = fit(training, train_settings, progress=False)
        test = evaluated.subset(held_out)
        scores = trained.score(test.batch(n))
        errors[held_out] = scores.reconstruction_error
        predicted[held_out] = scores.predicted_protocols()
        margins[held_out] = alert_margin(scores, settings.baseline)
        classes = tuple(trained.classes)
        linear = train_linear_reference(
            train_rows.batch(n), dataset.class_indices(train_rows.labels, classes), len(classes),
            validation_rows.batch(n), dataset.class_indices(validation_rows.labels, classes),
            trained.config)
        linear_predicted[held_out] = [classes[i] for i in linear.predict(test.batch(n))]
        truth[held_out] = [label if label in classes else OTHER for label in test.labels]
        classes_per_fold.append(classes)
    return HeldOutScores(evaluated, errors, predicted, truth,
                         ones_fraction(evaluated.batch(n)), classes_per_fold, linear_predicted,
                         margins)


def pair_table(scores: HeldOutScores, baseline: str, repetitions: int, seed: int) -> list[dict]:
    """One row per protocol with enough held-out rows: AUROC vs the baseline, and the 1-bit one.

    Every labelled flow counts; the `*_gap_free` figures repeat them on the flows whose heads
    start at the stream start of both directions (no gap flag), because capture snippets that
    begin mid-stream show bytes no opening-bytes model can judge.
    """
    labels = scores.data.label_array()
    gap_free = np.array([not (h.orig_gap or h.resp_gap) for h in scores.data.heads], dtype=bool)
    groups = np.array(scores.data.groups, dtype=object)
    sources = np.array(scores.data.label_sources, dtype=object)
    is_baseline = labels == baseline
    rows = []
    for protocol, count in Counter(labels[~is_baseline]).most_common():
        if count < MIN_PAIR_ROWS:
            continue
        members = np.flatnonzero(is_baseline | (labels == protocol))
        positive = labels[members] == protocol

        def model_auroc(picked: np.ndarray, members=members, positive=positive,
                        values=scores.reconstruction_error) -> float:
            chosen = values[members][picked]
            return accuracy.auroc(chosen[~positive[picked]], chosen[positive[picked]])

        everything = np.arange(len(members))
        ones = scores.ones[members]
        ones_auroc = accuracy.auroc(ones[~positive], ones[positive])
        complete = np.flatnonzero(gap_free[members])
        complete_ones = accuracy.auroc(ones[complete][~positive[complete]],
                                      ones[complete][positive[complete]])
        low, high = accuracy.bootstrap_interval(groups[members], model_auroc, repetitions, seed)
        rows.append({
            "protocol": protocol,
            "rows": int(count),
            "files": len(set(groups[labels == protocol])),
            "auroc": model_auroc(everything),
            "auroc_low": low,
            "auroc_high": high,
            "ones_fraction_auroc": accuracy.either_way_auroc(ones_auroc),
            "rows_gap_free": int(positive[complete].sum()),
            "auroc_gap_free": model_auroc(complete),
            "ones_fraction_auroc_gap_free": accuracy.either_way_auroc(complete_ones),
            "alert_auroc": model_auroc(everything, values=scores.alert_margin),
            "alert_auroc_gap_free": model_auroc(complete, values=scores.alert_margin),
            "label_sources": dict(Counter(sources[labels == protocol]).most_common()),
        })
    return rows


def classifier_summary(scores: HeldOutScores) -> dict:
    """Macro-F1 over the protocols that were classes, and the confusion matrix (names)."""
    truth = scores.truth_class.astype(str)
    predicted = scores.predicted.astype(str)
    known = np.array([label != UNKNOWN for label in scores.data.labels])
    names = sorted(set(truth[known]) | set(predicted[known]), key=lambda x: (x == OTHER, x))
    index = {name: i for i, name in enumerate(names)}
    matrix = accuracy.confusion_matrix(
        np.array([index[t] for t in truth[known]], dtype=np.int64),
        np.array([index[p] for p in predicted[known]], dtype=np.int64), len(names))
    real_classes = [index[name] for name in names if name != OTHER]
    f1 = accuracy.per_class_f1(matrix)
    return {
        "macro_f1": accuracy.macro_f1(matrix, [c for c in real_classes if matrix[c].sum() > 0]),
        "classes": names,
        "per_class_f1": {name: float(f1[i]) for i, name in enumerate(names)},
        "confusion": matrix.tolist(),
        "rows": int(known.sum()),
    }


def evaluate(
    train_only: LabelledHeads, evaluated: LabelledHeads, settings: EvalSettings,
    progress: bool = True,
) -> dict:
    """Run the cross-validation for every N, write plots and the report, return the metrics."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "baseline": settings.baseline,
        "folds": settings.folds,
        "evaluated_rows": len(evaluated),
        "evaluated_files": len(set(evaluated.groups)),
        "generated_training_rows": len(train_only),
        "label_counts": dict(evaluated.counts().most_common()),
        "by_n": {},
    }
    for n in settings.n_values:
        scores = cross_validate(train_only, evaluated, n, settings, progress)
        pairs = pair_table(scores, settings.baseline, settings.bootstrap, settings.seed)
        classifier = classifier_summary(scores)
        linear = classifier_summary(dataclasses.replace(scores, predicted=scores.linear_predicted))
        classifier["linear_reference_macro_f1"] = linear["macro_f1"]
        results["by_n"][str(n)] = {"pairs": pairs, "classifier": classifier}
        report.plot_error_histograms(scores.data.label_array(), scores.reconstruction_error,
                                     settings.baseline, settings.out_dir / f"errors_n{n}.png", n)
        report.plot_roc_curves(scores.data.label_array(), scores.reconstruction_error,
                               scores.ones, settings.baseline, pairs,
                               settings.out_dir / f"roc_n{n}.png", n)
        report.plot_confusion(classifier, settings.out_dir / f"confusion_n{n}.png", n)
    report.write_markdown(results, settings.out_dir / "report.md")
    (settings.out_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
    return results


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_settings_arguments(parser, EvalSettings)
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(EvalSettings, args)
    train_only = load_made_data(args, settings.seed)
    evaluated = load_captured_data(args)
    # A port guess is what an anomaly fakes: it may train a model, never grade one.
    evaluated = evaluated.where(np.array([s != "port" for s in evaluated.label_sources]))
    if len(set(evaluated.groups)) < settings.folds:
        print(f"headbits eval: {len(set(evaluated.groups))} capture files have flows labelled by "
              f"a parser or the corpus (port guesses never grade), fewer than --folds "
              f"({settings.folds}): give --corpus, or --captures with --labels or conn.logs",
              file=sys.stderr)
        return 2
    results = evaluate(train_only, evaluated, settings)
    if args.json:
        print(json.dumps(results, default=float))
    else:
        print(report.summary_table(results))
        print(f"report: {settings.out_dir / 'report.md'}")
    return 0
