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

from headbits.collector.labels import TSHARK_SOURCE
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
RATE_TARGETS = (0.001, 0.01)
"""Configured alert rates whose measured rate on held-out files every evaluation reports."""
MIN_RATE_ROWS = 100
"""Held-out normal rows a class needs before its own measured alert rate is reported."""


@dataclass(frozen=True)
class EvalSettings:
    n_values: tuple[int, ...] = setting((8, 16, 32), "payload bytes per direction to evaluate")
    baseline: str = setting("tls", "the protocol the autoencoder learns (the capstone's TLS)")
    folds: int = setting(3, "cross-validation folds over capture files")
    min_class_rows: int = setting(20, "training rows a protocol needs to become a class")
    max_epochs: int = setting(60, "upper bound on epochs per fold (early stopping ends sooner)")
    calibration_folds: int = setting(
        0, "cross-fit each fold's tail calibration over K groups of its training files (as "
           "`headbits train --calibration-folds`)")
    bootstrap: int = setting(200, "bootstrap repetitions over files for the intervals")
    leave_protocol_out: int = setting(
        0, "also, for the K protocols with the most capture files (at least --folds), train "
           "without each at the first N and measure how many of its flows alert novel-protocol")
    out_dir: Path = setting(Path("report"), "where the report, plots and metrics.json go")
    seed: int = setting(0, "seed for the folds and the models")
    tensorboard_dir: Path | None = setting(
        None, "write TensorBoard event files of every fold's training run under <dir>/<run>/")


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
    tail_probability: np.ndarray | None = None  # calibrated novelty tail, same rows
    trained_protocol: np.ndarray | None = None  # bool: the row's label was in its training data


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
    progress: bool = True, fixed_folds: np.ndarray | None = None,
    folds_to_run: tuple[int, ...] | None = None, baseline: tuple[str, ...] | None = None,
    run_name: str = "cv",
) -> HeldOutScores:
    """Held-out scores of every row, each from the model of the fold that did not train on it.

    `fixed_folds` (a fold per row) replaces the hash of the capture file; `folds_to_run` limits
    the folds trained (rows of the others keep NaN scores and are left out of the figures);
    `baseline` replaces the protocol the autoencoder learns (empty: every labelled protocol).
    """
    fold_of_row = (dataset.group_fold(evaluated.groups, settings.folds, settings.seed)
                   if fixed_folds is None else fixed_folds)
    errors = np.full(len(evaluated), np.nan, dtype=np.float32)
    predicted = np.empty(len(evaluated), dtype=object)
    linear_predicted = np.empty(len(evaluated), dtype=object)
    truth = np.empty(len(evaluated), dtype=object)
    margins = np.full(len(evaluated), np.nan, dtype=np.float64)
    tails = np.full(len(evaluated), np.nan, dtype=np.float64)
    trained_protocol = np.zeros(len(evaluated), dtype=bool)
    classes_per_fold = []
    train_settings = TrainSettings(
        n=n, baseline=(settings.baseline,) if baseline is None else baseline,
        min_class_rows=settings.min_class_rows,
        max_epochs=settings.max_epochs, seed=settings.seed,
        calibration_folds=settings.calibration_folds,
    )
    folds = range(settings.folds) if folds_to_run is None else folds_to_run
    for fold in tqdm(folds, desc=f"N={n} folds", disable=not progress):
        held_out = np.flatnonzero(fold_of_row == fold)
        training = LabelledHeads().extend(train_only).extend(
            evaluated.subset(np.flatnonzero(fold_of_row != fold)))
        log_dir = (settings.tensorboard_dir / f"eval-{run_name}-n{n}-fold{fold}"
                   if settings.tensorboard_dir is not None else None)
        trained, train_rows, validation_rows = fit(training, train_settings, progress=False,
                                                   log_dir=log_dir)
        test = evaluated.subset(held_out)
        scores = trained.score(test.batch(n))
        errors[held_out] = scores.reconstruction_error
        predicted[held_out] = scores.predicted_protocols()
        margins[held_out] = alert_margin(scores, settings.baseline)
        tails[held_out] = scores.tail_probability
        trained_protocol[held_out] = np.isin(test.label_array(), list(set(train_rows.labels)))
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
                         margins, tails, trained_protocol)


def test_on_corpus(
    train_only: LabelledHeads, training: LabelledHeads, test: LabelledHeads, n: int,
    settings: EvalSettings,
) -> HeldOutScores:
    """One model trained on `train_only` + `training`, scored on `test` (another corpus): the
    same figures as cross-validation, with the user's hold-out as the only fold."""
    merged = LabelledHeads().extend(training).extend(test)
    train_groups = {f"train:{g}" for g in training.groups}
    merged.groups = [f"train:{g}" for g in training.groups] + [f"test:{g}" for g in test.groups]
    # Fold 0 holds exactly the test corpus: a one-fold "cross-validation" with fixed sides.
    return cross_validate(train_only, merged, n, settings, fixed_folds=np.array(
        [0 if g not in train_groups else 1 for g in merged.groups]), progress=False,
        folds_to_run=(0,), run_name="test-corpus")


ALL_OTHERS = "all others"
"""The pair-table row that compares the baseline with every other labelled protocol at once."""


def pair_table(scores: HeldOutScores, baseline: str, repetitions: int, seed: int) -> list[dict]:
    """One row per protocol with enough held-out rows: AUROC vs the baseline, and the 1-bit one;
    a last row (`ALL_OTHERS`) pools every other labelled protocol.

    The figures are taken on gap-free flows (heads that start at the stream start of both
    directions): a mid-stream head is scored but never alerts by default, and its bytes are no
    protocol's opening. The `*_all_flows` figures repeat them on every labelled flow, the
    `*_parser_labels` ones on the gap-free flows whose label a parser confirmed (not tshark's
    port-led dissection, which names a STARTTLS connection by its later TLS layer while its
    opening bytes are SMTP, and an SSH flow behind sslh on 443 as TLS).
    """
    labels = scores.data.label_array()
    gap_free = np.array([not head.midstream for head in scores.data.heads], dtype=bool)
    groups = np.array(scores.data.groups, dtype=object)
    sources = np.array(scores.data.label_sources, dtype=object)
    parser_labelled = gap_free & (sources != TSHARK_SOURCE)
    is_baseline = labels == baseline
    others = [(protocol, labels == protocol) for protocol, count in
              Counter(labels[~is_baseline]).most_common() if count >= MIN_PAIR_ROWS]
    if others:
        others.append((ALL_OTHERS, ~is_baseline & (labels != UNKNOWN)))
    rows = []
    for protocol, is_protocol in others:
        members = np.flatnonzero(is_baseline | is_protocol)
        positive = is_protocol[members]

        def model_auroc(picked: np.ndarray, members=members, positive=positive,
                        values=scores.reconstruction_error) -> float:
            chosen = values[members][picked]
            return accuracy.auroc(chosen[~positive[picked]], chosen[positive[picked]])

        def interval(picked: np.ndarray, members=members, f=model_auroc) -> tuple[float, float]:
            return accuracy.bootstrap_interval(
                groups[members][picked], lambda drawn: f(picked[drawn]), repetitions, seed)

        def ones_auroc(picked: np.ndarray, members=members, positive=positive) -> float:
            chosen = scores.ones[members][picked]
            return accuracy.either_way_auroc(accuracy.auroc(chosen[~positive[picked]],
                                                            chosen[positive[picked]]))

        everything = np.arange(len(members))
        complete = np.flatnonzero(gap_free[members])
        confirmed = np.flatnonzero(parser_labelled[members])
        low, high = interval(complete)
        confirmed_low, confirmed_high = interval(confirmed)
        rows.append({
            "protocol": protocol,
            "rows": int(positive[complete].sum()),
            "files": len(set(groups[members][complete][positive[complete]])),
            "auroc": model_auroc(complete),
            "auroc_low": low,
            "auroc_high": high,
            "alert_auroc": model_auroc(complete, values=scores.alert_margin),
            "ones_fraction_auroc": ones_auroc(complete),
            "rows_all_flows": int(positive.sum()),
            "auroc_all_flows": model_auroc(everything),
            "alert_auroc_all_flows": model_auroc(everything, values=scores.alert_margin),
            "ones_fraction_auroc_all_flows": ones_auroc(everything),
            "rows_parser_labels": int(positive[confirmed].sum()),
            "auroc_parser_labels": model_auroc(confirmed),
            "auroc_parser_labels_low": confirmed_low,
            "auroc_parser_labels_high": confirmed_high,
            "label_sources": dict(Counter(sources[is_protocol]).most_common()),
        })
    return rows


def judged_rows(scores: HeldOutScores) -> np.ndarray:
    """bool per row: scored, graded (not a port guess) and gap-free (midstream heads are scored
    but never alert by default, so no alert rate or recall counts them)."""
    return (np.isfinite(scores.tail_probability)
            & np.array([s != "port" for s in scores.data.label_sources])
            & np.array([not head.midstream for head in scores.data.heads]))


def rate_summary(scores: HeldOutScores, repetitions: int, seed: int) -> dict:
    """Configured novel-protocol alert rate next to the rate measured on held-out files.

    Normal = held-out, gap-free flows of protocols the fold's model trained on (rare ones in
    `other` included). Per class (the true label) where it has MIN_RATE_ROWS such rows; the
    overall rate has a bootstrap interval over files. Novel = held-out flows of protocols the
    fold never saw (natural in file-grouped folds: their only files were held out), and
    unknown flows are neither.
    """
    labels = scores.data.label_array()
    judged = judged_rows(scores) & (labels != UNKNOWN)
    normal = judged & scores.trained_protocol
    novel = judged & ~scores.trained_protocol
    groups = np.array(scores.data.groups, dtype=object)
    tails = scores.tail_probability
    result = {"normal_rows": int(normal.sum()), "normal_files": len(set(groups[normal])),
              "never_seen_rows": int(novel.sum()),
              "never_seen_protocols": sorted(set(labels[novel])), "targets": []}
    for target in RATE_TARGETS:
        alerting = tails <= target

        def rate(rows: np.ndarray, alerting=alerting, normal=normal) -> float:
            chosen = rows[normal[rows]]
            return float(alerting[chosen].mean()) if len(chosen) else float("nan")

        low, high = accuracy.bootstrap_interval(groups, rate, repetitions, seed)
        per_class = {}
        for protocol, count in Counter(labels[normal]).most_common():
            if count >= MIN_RATE_ROWS:
                rows = normal & (labels == protocol)
                per_class[protocol] = {"rows": int(count), "rate": float(alerting[rows].mean())}
        measured = float(alerting[normal].mean())
        result["targets"].append({
            "target": target, "measured": measured, "low": low, "high": high,
            "within_half_to_double": bool(target / 2 <= measured <= 2 * target),
            "never_seen_recall": float(alerting[novel].mean()) if novel.any() else float("nan"),
            "per_class": per_class,
        })
    return result


def leave_protocol_out(
    train_only: LabelledHeads, evaluated: LabelledHeads, n: int, settings: EvalSettings,
    progress: bool = True,
) -> list[dict]:
    """For each of the protocols with the most files: train without it, measure its alerts.

    The model trains on generated traffic and the capture files of all folds but one, with
    every flow of the protocol removed (whatever its label source); its novel-protocol recall
    is taken on all of that protocol's graded, gap-free flows, against the alert rate on the
    held-out fold's flows of trained protocols. Port guesses never grade.
    """
    labels = evaluated.label_array()
    graded = np.array([s != "port" for s in evaluated.label_sources])
    files = Counter(label for label, _ in {(lab, g) for lab, g, ok in zip(
        labels, evaluated.groups, graded, strict=True) if ok})
    protocols = [p for p, count in files.most_common() if count >= settings.folds
                 and p != UNKNOWN][:settings.leave_protocol_out]
    fold_of_row = dataset.group_fold(evaluated.groups, settings.folds, settings.seed)
    rows = []
    for index, protocol in enumerate(tqdm(protocols, desc=f"N={n} leave-protocol-out",
                                          disable=not progress)):
        fold = index % settings.folds
        # The left-out protocol's flows sit in the "held-out" fold wherever their file is, so
        # no fold trains on them; everything else keeps its file's fold.
        folds = np.where(labels == protocol, fold, fold_of_row)
        # The autoencoder learns every trained protocol: the left-out one may be the baseline.
        scores = cross_validate(train_only, evaluated, n, settings, progress=False,
                                fixed_folds=folds, folds_to_run=(fold,), baseline=(),
                                run_name=f"without-{protocol}")
        judged = judged_rows(scores)
        novel = judged & (labels == protocol)
        normal = judged & scores.trained_protocol & (labels != UNKNOWN)
        row = {"protocol": protocol, "files": files[protocol], "novel_rows": int(novel.sum()),
               "normal_rows": int(normal.sum()),
               "auroc": accuracy.auroc(-scores.tail_probability[normal],
                                       -scores.tail_probability[novel])}
        for target in RATE_TARGETS:
            alerting = scores.tail_probability <= target
            row[f"recall_at_{target}"] = float(alerting[novel].mean())
            row[f"normal_rate_at_{target}"] = float(alerting[normal].mean())
        worst = np.argsort(scores.tail_probability[normal], kind="stable")[:20]
        row["most_novel_normal_labels"] = dict(Counter(labels[normal][worst]).most_common(5))
        rows.append(row)
    return rows


def classifier_summary(scores: HeldOutScores) -> dict:
    """Macro-F1 over the protocols that were classes, and the confusion matrix (names)."""
    truth = scores.truth_class.astype(str)
    predicted = scores.predicted.astype(str)
    known = np.array([label != UNKNOWN for label in scores.data.labels]) & (
        np.isfinite(scores.reconstruction_error))
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
    progress: bool = True, test_corpus: LabelledHeads | None = None,
) -> dict:
    """Run the cross-validation for every N (or, with `test_corpus`, train on `evaluated` and
    test on it), write plots and the report, return the metrics."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "baseline": settings.baseline,
        "folds": settings.folds,
        "evaluated_rows": len(evaluated),
        "evaluated_files": len(set(evaluated.groups)),
        "generated_training_rows": len(train_only),
        "label_counts": dict(evaluated.counts().most_common()),
        "test_corpus_rows": len(test_corpus) if test_corpus is not None else 0,
        "by_n": {},
    }
    for n in settings.n_values:
        if test_corpus is None:
            scores = cross_validate(train_only, evaluated, n, settings, progress)
        else:
            scores = test_on_corpus(train_only, evaluated, test_corpus, n, settings)
            scores = _scored_only(scores)
        pairs = pair_table(scores, settings.baseline, settings.bootstrap, settings.seed)
        classifier = classifier_summary(scores)
        linear = classifier_summary(dataclasses.replace(scores, predicted=scores.linear_predicted))
        classifier["linear_reference_macro_f1"] = linear["macro_f1"]
        rates = rate_summary(scores, settings.bootstrap, settings.seed)
        results["by_n"][str(n)] = {"pairs": pairs, "classifier": classifier,
                                   "alert_rates": rates}
        report.plot_rate_calibration(scores.tail_probability[
            judged_rows(scores) & scores.trained_protocol], settings.out_dir / f"rates_n{n}.png", n)
        report.plot_error_histograms(scores.data.label_array(), scores.reconstruction_error,
                                     settings.baseline, settings.out_dir / f"errors_n{n}.png", n)
        gap_free = np.array([not head.midstream for head in scores.data.heads], dtype=bool)
        report.plot_roc_curves(scores.data.label_array()[gap_free],
                               scores.reconstruction_error[gap_free], scores.ones[gap_free],
                               settings.baseline,
                               [pair for pair in pairs if pair["protocol"] != ALL_OTHERS],
                               settings.out_dir / f"roc_n{n}.png", n)
        report.plot_confusion(classifier, settings.out_dir / f"confusion_n{n}.png", n)
    if settings.leave_protocol_out and test_corpus is None:
        n = settings.n_values[0]
        results["leave_protocol_out"] = {"n": n, "protocols": leave_protocol_out(
            train_only, evaluated, n, settings, progress)}
    report.write_markdown(results, settings.out_dir / "report.md")
    (settings.out_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
    return results


def _scored_only(scores: HeldOutScores) -> HeldOutScores:
    """The rows a model scored (a test-corpus run scores the test corpus only)."""
    rows = np.flatnonzero(np.isfinite(scores.reconstruction_error))
    pick = {name: (value[rows] if isinstance(value, np.ndarray) else value)
            for name, value in vars(scores).items() if name != "data"}
    return HeldOutScores(data=scores.data.subset(rows), **pick)


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_settings_arguments(parser, EvalSettings)
    parser.add_argument("--test-corpus", type=Path, metavar="DIR",
                        help="train on the corpus/captures given, test on this other labelled "
                             "corpus (MANIFEST.tsv + LABELS.tsv) instead of cross-validating")
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
    test_corpus = None
    if args.test_corpus:
        test_corpus = dataset.from_corpus(args.test_corpus)
        test_corpus = test_corpus.where(np.array([s != "port" for s in test_corpus.label_sources]))
    results = evaluate(train_only, evaluated, settings, test_corpus=test_corpus)
    if args.json:
        print(json.dumps(results, default=float))
    else:
        print(report.summary_table(results))
        print(f"report: {settings.out_dir / 'report.md'}")
    return 0
