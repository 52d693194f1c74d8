"""Which tail calibration keeps the novel-protocol alert rate on new capture files?

The novelty score's tail probability is looked up among held-out normal scores (validation
capture groups the weights never learned). Looked up empirically, it cannot go below
1 / (rows + 1): with the usual one or two thousand validation rows, a 0.1 % rate alerts only
above the largest validation score, and a few odd files set that maximum above nearly every
new flow. This script trains one model per file-grouped fold (as `headbits eval` does: the
generated flows in every fold's training data, port guesses never grading, mid-stream heads
left out), keeps each fold's validation and held-out novelty scores, and compares calibrations
of the same scores:

- `empirical` / `empirical_global`: the split-conformal share (#{>= s} + 1) / (m + 1), per
  predicted class where it has `--min-rows` validation rows / over all rows;
- `exponential` / `exponential_global`: the same below the k-th largest validation score u
  (k = `--tail-share` of the segment, at least `--min-tail` rows); above it the peaks-over-
  threshold estimate (k + 1) / (m + 1) * exp(-(s - u) / beta), beta the mean excess over u
  (the maximum-likelihood exponential fit of the excesses), which keeps going past the maximum;
- `pareto`: the exponential fit on log scores (a power-law tail, heavier);
- `gpd`: a generalised Pareto fit of the excesses (method of moments, shape clipped to
  [-0.5, 0.5]).

Each is graded by the alert rate it gives on held-out flows of trained protocols (the target
is 0.5x-2x of the configured rate, with a bootstrap interval over files) and its recall on
held-out flows of protocols their fold never trained on. `--save-scores` / `--load-scores`
keep the trained folds' scores, so calibrations can be compared without training again.

Last line: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RATES = (0.001, 0.01)
METHODS = ("empirical", "empirical_global", "exponential", "exponential_global", "pareto",
           "gpd")


def fold_scores(args: argparse.Namespace) -> list[dict[str, np.ndarray]]:
    """Per fold: validation (calibration) and held-out novelty scores and predicted classes."""
    from headbits.common.protocols import UNKNOWN
    from headbits.traffic import generate
    from headbits.trainer import dataset
    from headbits.trainer.dataset import LabelledHeads
    from headbits.trainer.train import TrainSettings, fit

    generated = dataset.from_heads(generate(sessions_per_protocol=args.generate, seed=args.seed,
                                            progress=False), "generated")
    corpus = dataset.from_corpus(args.corpus, progress=False)
    evaluated = corpus.where(np.array([s != "port" for s in corpus.label_sources]))
    fold_of_row = dataset.group_fold(evaluated.groups, args.folds, args.seed)
    settings = TrainSettings(n=args.n, baseline=("tls",), min_class_rows=20,
                             max_epochs=args.max_epochs, seed=args.seed)
    folds = []
    for fold in range(args.folds):
        started = time.time()
        training = LabelledHeads().extend(generated).extend(
            evaluated.where(fold_of_row != fold))
        trained, train_rows, validation_rows = fit(training, settings, progress=False)
        calibration = validation_rows.where(
            np.array([len(h.orig_head) + len(h.resp_head) > 0 for h in validation_rows.heads]))
        test = evaluated.where(fold_of_row == fold)
        labels = test.label_array()
        judged = (np.array([not h.midstream for h in test.heads]) & (labels != UNKNOWN))
        trained_protocol = np.isin(labels, list(set(train_rows.labels)))
        cal, held_out = trained.score(calibration.batch(args.n)), trained.score(test.batch(args.n))
        folds.append({
            "calibration_score": cal.novelty_score.astype(np.float64),
            "calibration_class": np.argmax(cal.protocol_probs, axis=1),
            "score": held_out.novelty_score.astype(np.float64),
            "predicted": np.argmax(held_out.protocol_probs, axis=1),
            "normal": judged & trained_protocol,
            "novel": judged & ~trained_protocol,
            "group": np.array([f"{fold}:{g}" for g in test.groups]),
            "served_tail": held_out.tail_probability.astype(np.float64),
            "classes": np.array(trained.classes),
        })
        print(f"fold {fold}: {len(calibration)} calibration rows, {len(test)} held-out rows, "
              f"{time.time() - started:.0f} s", file=sys.stderr)
    return folds


def empirical_tail(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(#{calibration >= s} + 1) / (m + 1): the served split-conformal lookup, one segment."""
    from headbits.trainer.calibrate import tail_calibration

    one_class = np.zeros(len(calibration), np.int32)
    lookup = tail_calibration(calibration, one_class, 1, min_rows=len(calibration) + 1)
    return lookup.tail_probability(scores, np.zeros(len(scores), np.int32)).astype(np.float64)


def peaks_over_threshold(calibration: np.ndarray, scores: np.ndarray, kind: str,
                         tail_share: float, min_tail: int) -> np.ndarray:
    """Empirical below the k-th largest calibration score u, a fitted tail above it."""
    ordered = np.sort(calibration)[::-1]
    m = len(ordered)
    k = min(m - 1, max(min_tail, int(np.ceil(tail_share * m))))
    tails = empirical_tail(calibration, scores)
    if k < 2:
        return tails
    u = ordered[k]
    above = scores > u
    at_u = (k + 1) / (m + 1)
    if kind == "pareto":
        excess, over = np.log1p(ordered[:k]) - np.log1p(u), np.log1p(scores[above]) - np.log1p(u)
    else:
        excess, over = ordered[:k] - u, scores[above] - u
    mean = excess.mean()
    if mean <= 0:
        return tails
    if kind == "gpd":
        variance = excess.var()
        shape = float(np.clip(0.5 * (1 - mean ** 2 / variance), -0.5, 0.5)) if variance > 0 else 0
        scale = mean * (1 - shape)
        if abs(shape) < 1e-6:
            fitted = np.exp(-over / scale)
        else:
            fitted = np.maximum(1 + shape * over / scale, 0.0) ** (-1 / shape)
    else:
        fitted = np.exp(-over / mean)
    tails[above] = at_u * fitted
    return tails


def calibrated(method: str, fold: dict[str, np.ndarray], args: argparse.Namespace) -> np.ndarray:
    """The tail probability of every held-out row of `fold` under `method`."""
    def tail(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if method.startswith("empirical"):
            return empirical_tail(calibration, scores)
        return peaks_over_threshold(calibration, scores, method.removesuffix("_global"),
                                    args.tail_share, args.min_tail)

    scores, predicted = fold["score"], fold["predicted"]
    cal, cal_class = fold["calibration_score"], fold["calibration_class"]
    tails = tail(cal, scores)
    if method.endswith("_global"):
        return tails
    for cls in np.unique(predicted):
        own = cal_class == cls
        if own.sum() >= args.min_rows:
            rows = predicted == cls
            tails[rows] = tail(cal[own], scores[rows])
    return tails


def grade(folds: list[dict[str, np.ndarray]], tails: np.ndarray, args: argparse.Namespace) -> dict:
    from headbits.trainer import accuracy

    normal = np.concatenate([f["normal"] for f in folds])
    novel = np.concatenate([f["novel"] for f in folds])
    groups = np.concatenate([f["group"] for f in folds])
    figures = {}
    for rate in RATES:
        alerting = tails <= rate

        def measured(rows: np.ndarray, alerting=alerting) -> float:
            chosen = rows[normal[rows]]
            return float(alerting[chosen].mean()) if len(chosen) else float("nan")

        low, high = accuracy.bootstrap_interval(groups, measured, args.bootstrap, args.seed)
        value = float(alerting[normal].mean())
        figures[str(rate)] = {
            "measured": round(value, 5), "low": round(low, 5), "high": round(high, 5),
            "within_half_to_double": bool(rate / 2 <= value <= 2 * rate),
            "per_fold": [round(float((t <= rate)[f["normal"]].mean()), 5)
                         for f, t in zip(folds, np.split(tails, np.cumsum(
                             [len(f["score"]) for f in folds])[:-1]), strict=True)],
            "never_seen_recall": round(float(alerting[novel].mean()), 4),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/pcaps"))
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--generate", type=int, default=30)
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--min-rows", type=int, default=1000,
                        help="validation rows a predicted class needs for a segment of its own")
    parser.add_argument("--tail-share", type=float, default=0.1)
    parser.add_argument("--min-tail", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-scores", type=Path)
    parser.add_argument("--load-scores", type=Path)
    args = parser.parse_args()

    started = time.time()
    if args.load_scores:
        with np.load(args.load_scores, allow_pickle=False) as saved:
            count = int(saved["folds"])
            folds = [{key.split("/", 1)[1]: saved[key] for key in saved.files
                      if key.startswith(f"{fold}/")} for fold in range(count)]
    else:
        folds = fold_scores(args)
        if args.save_scores:
            np.savez(args.save_scores, folds=len(folds),
                     **{f"{i}/{key}": value for i, fold in enumerate(folds)
                        for key, value in fold.items()})
    results = {"served": grade(folds, np.concatenate([f["served_tail"] for f in folds]), args)}
    for method in METHODS:
        tails = np.concatenate([calibrated(method, fold, args) for fold in folds])
        results[method] = grade(folds, tails, args)
    for method, figures in results.items():
        print(f"{method:20s} " + "  ".join(
            f"rate {rate}: {f['measured']:.4f} ({f['low']:.4f}-{f['high']:.4f}) "
            f"recall {f['never_seen_recall']:.3f}" for rate, f in figures.items()),
            file=sys.stderr)
    print(json.dumps({
        "n": args.n, "folds": len(folds),
        "calibration_rows": [len(f["calibration_score"]) for f in folds],
        "normal_rows": int(sum(f["normal"].sum() for f in folds)),
        "never_seen_rows": int(sum(f["novel"].sum() for f in folds)),
        "tail_share": args.tail_share, "min_tail": args.min_tail, "min_rows": args.min_rows,
        "methods": results, "seconds": round(time.time() - started, 1),
    }))


if __name__ == "__main__":
    main()
