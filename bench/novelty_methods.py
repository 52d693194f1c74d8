"""Which novelty score finds protocols the model never saw? Leave-protocol-out on a corpus.

For each protocol with enough capture files (labels a parser or the corpus confirmed; port
guesses never grade), a model is trained on the capture files of all folds but one with every
flow of that protocol removed; it then scores the held-out fold's flows of trained protocols
(the normal traffic an alert rate is paid on) and every flow of the left-out protocol. Each
candidate score is graded by its recall at 1 % false positives and its AUROC, novel vs normal;
the threshold is the oracle one on the held-out normal flows, so this measures ranking power
only (calibration is `headbits eval`'s job). Mid-stream heads are left out of both sides.

Candidates: the model's reconstruction error (`autoencoder`); the classifier's 1 - max
probability (`max_probability`) and energy (`energy`); distances to the training rows: nearest
neighbour in the classifier's hidden layer (`knn_hidden`), in the autoencoder's code
(`knn_code`), on the input bits + mask (`knn_input`), and the class-conditional Mahalanobis
distance in the classifier's hidden layer (`mahalanobis`) and on its logits, wide part included
(`mahalanobis_logits`), the same distance on per-direction byte-class profiles (`byte_profile`:
printable, NUL, high-bit, CR/LF and distinct-value shares), and ensembles of calibrated scores.

Last line: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from headbits.common.protocols import UNKNOWN
from headbits.trainer import accuracy, dataset
from headbits.trainer.dataset import LabelledHeads
from headbits.trainer.train import TrainSettings, fit

NEIGHBOUR_ROWS = 4096
TARGET_FPR = 0.01


def layers(trained, batch) -> dict[str, np.ndarray]:
    """The network's intermediate values for `batch`, numpy, in chunks."""
    import tensorflow as tf

    from headbits.trainer.model import unpack_heads

    network = trained.graph.network
    parts: dict[str, list[np.ndarray]] = {"input": [], "hidden": [], "code": [], "logits": []}
    for start in range(0, len(batch), 4096):
        part = batch.select(slice(start, start + 4096))
        bits, mask = unpack_heads(tf.constant(part.head_bytes),
                                  tf.constant(part.head_lengths.astype(np.int32)), network.n)
        features = tf.concat([bits, mask], axis=1)
        hidden = features
        for layer in network.encoder:
            hidden = layer(hidden)
        code = network.code(hidden)
        classifier_hidden, logits, _ = network.classify(
            features, tf.constant(part.head_bytes), tf.constant(part.head_lengths.astype(np.int32)))
        parts["input"].append(features.numpy())
        parts["hidden"].append(classifier_hidden.numpy())
        parts["code"].append(code.numpy())
        parts["logits"].append(logits.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def nearest_distance(rows: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each row to its nearest reference row."""
    reference_norms = (references ** 2).sum(axis=1)
    best = np.empty(len(rows))
    for start in range(0, len(rows), 2048):
        part = rows[start:start + 2048]
        distances = ((part ** 2).sum(axis=1)[:, None] + reference_norms[None, :]
                     - 2 * part @ references.T)
        best[start:start + 2048] = np.maximum(distances.min(axis=1), 0)
    return best


def mahalanobis(rows: np.ndarray, train: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Min over classes of the tied-covariance Mahalanobis distance (Lee et al., 2018)."""
    classes = np.unique(labels)
    means = np.stack([train[labels == c].mean(axis=0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / len(train) + 1e-3 * np.eye(train.shape[1])
    precision = np.linalg.inv(covariance)
    best = np.full(len(rows), np.inf)
    for mean in means:
        delta = rows - mean
        best = np.minimum(best, np.einsum("ij,jk,ik->i", delta, precision, delta))
    return best


def byte_profiles(batch) -> np.ndarray:
    """float [rows, 12]: per direction, the share of the head's N bytes seen and, of the bytes
    seen, the shares that are printable ASCII, NUL, high-bit and CR/LF, and distinct values."""
    n = batch.head_bytes.shape[1] // 2
    values = batch.head_bytes.reshape(-1, 2, n).astype(np.int64)
    seen = np.arange(n)[None, None, :] < batch.head_lengths[:, :, None]
    count = np.maximum(seen.sum(axis=2), 1)

    def share(condition: np.ndarray) -> np.ndarray:
        return (condition & seen).sum(axis=2) / count

    distinct = np.array([[len(set(row[ok])) for row, ok in zip(rows, oks, strict=True)]
                         for rows, oks in zip(values, seen, strict=True)]) / count
    return np.concatenate([seen.sum(axis=2) / n, share((values >= 0x20) & (values < 0x7F)),
                           share(values == 0), share(values >= 0x80),
                           share((values == 10) | (values == 13)), distinct], axis=1)


def candidate_scores(trained, train_batch, train_labels, test_batch) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    reference_rows = rng.choice(len(train_batch), min(NEIGHBOUR_ROWS, len(train_batch)),
                                replace=False)
    train_layers = layers(trained, train_batch.select(reference_rows))
    test_layers = layers(trained, test_batch)
    logits = test_layers["logits"].astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    probs = np.exp(logits - top)
    probs /= probs.sum(axis=1, keepdims=True)
    return {
        "autoencoder": trained.score(test_batch).reconstruction_error,
        "max_probability": 1 - probs.max(axis=1),
        "energy": -(top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))),
        "knn_hidden": nearest_distance(test_layers["hidden"], train_layers["hidden"]),
        "knn_code": nearest_distance(test_layers["code"], train_layers["code"]),
        "knn_input": nearest_distance(test_layers["input"], train_layers["input"]),
        "mahalanobis": mahalanobis(test_layers["hidden"], train_layers["hidden"],
                                   train_labels[reference_rows]),
        "mahalanobis_logits": mahalanobis(logits, train_layers["logits"].astype(np.float64),
                                          train_labels[reference_rows]),
        "byte_profile": mahalanobis(byte_profiles(test_batch),
                                    byte_profiles(train_batch.select(reference_rows)),
                                    train_labels[reference_rows]),
    }


def tail_probabilities(calibration: np.ndarray, calibration_class: np.ndarray,
                       values: np.ndarray, value_class: np.ndarray,
                       min_rows: int) -> np.ndarray:
    """Split-conformal tail probability of each value among held-out normal values of its
    predicted class (of every class where the class has fewer than `min_rows`)."""
    tails = np.empty(len(values))
    everything = np.sort(calibration)
    for cls in np.unique(value_class):
        own = np.sort(calibration[calibration_class == cls])
        reference = own if len(own) >= min_rows else everything
        rows = value_class == cls
        at_least = len(reference) - np.searchsorted(reference, values[rows], side="left")
        tails[rows] = (at_least + 1) / (len(reference) + 1)
    return tails


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values, kind="stable"), kind="stable") / max(len(values) - 1, 1)


def recall_at(normal: np.ndarray, novel: np.ndarray, fpr: float) -> float:
    threshold = np.quantile(normal, 1 - fpr, method="higher")
    return float((novel > threshold).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/pcaps"))
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--min-files", type=int, default=5)
    parser.add_argument("--max-protocols", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--min-calibration-rows", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = dataset.from_corpus(args.corpus, progress=False)
    labels = data.label_array()
    graded = np.array([s != "port" for s in data.label_sources])
    opening = np.array([not (h.orig_gap or h.resp_gap) for h in data.heads])
    files = Counter()
    for label, _group in {(lab, g) for lab, g, ok in zip(labels, data.groups, graded, strict=True)
                         if ok}:
        files[label] += 1
    protocols = [p for p, count in files.most_common()
                 if count >= args.min_files and p != UNKNOWN][:args.max_protocols]
    fold_of_row = dataset.group_fold(data.groups, args.folds, args.seed)
    settings = TrainSettings(n=args.n, max_epochs=args.max_epochs, seed=args.seed)
    results: dict[str, dict] = {}
    for index, protocol in enumerate(protocols):
        started = time.time()
        fold = index % args.folds
        in_training = (fold_of_row != fold) & (labels != protocol)
        training = data.where(in_training)
        trained, train_rows, validation_rows = fit(training, settings, progress=False)
        trained_protocols = set(train_rows.labels)
        normal = ((fold_of_row == fold) & graded & opening & (labels != protocol)
                  & np.isin(labels, list(trained_protocols - {UNKNOWN})))
        novel = graded & opening & (labels == protocol)
        test = data.where(normal | novel)
        is_novel = test.label_array() == protocol
        train_labels = dataset.class_indices(train_rows.labels, trained.classes)
        test_and_validation = LabelledHeads().extend(test).extend(validation_rows.where(
            np.array([not (h.orig_gap or h.resp_gap) for h in validation_rows.heads])))
        both = candidate_scores(trained, train_rows.batch(args.n), train_labels,
                                test_and_validation.batch(args.n))
        predicted = np.argmax(trained.score(test_and_validation.batch(args.n)).protocol_probs,
                              axis=1)
        is_test = np.arange(len(test_and_validation)) < len(test)
        scores = {name: values[is_test] for name, values in both.items()}
        for name, values in both.items():
            # Lower tail = more novel: rank by its negative.
            scores[f"{name}/class"] = -tail_probabilities(
                values[~is_test], predicted[~is_test], values[is_test], predicted[is_test],
                args.min_calibration_rows)
        # Min-p ensembles: a row is as novel as its most surprising calibrated score.
        scores["autoencoder+knn_input"] = np.maximum(scores["autoencoder/class"],
                                                     scores["knn_input/class"])
        scores["autoencoder+mahalanobis"] = np.maximum(scores["autoencoder/class"],
                                                       scores["mahalanobis/class"])
        # Mean-rank ensemble of calibrated scores that look at different things.
        scores["rank_mean"] = np.mean([_ranks(scores[f"{name}/class"]) for name in (
            "mahalanobis", "knn_input", "byte_profile", "mahalanobis_logits")], axis=0)
        results[protocol] = {
            "novel_rows": int(is_novel.sum()), "normal_rows": int((~is_novel).sum()),
            "seconds": round(time.time() - started, 1),
            **{name: {"recall_at_1pct": recall_at(values[~is_novel], values[is_novel],
                                                  TARGET_FPR),
                      "auroc": accuracy.auroc(values[~is_novel], values[is_novel])}
               for name, values in scores.items()},
        }
        print(protocol, json.dumps(results[protocol]), file=sys.stderr, flush=True)
    names = [name for name in next(iter(results.values())) if isinstance(
        next(iter(results.values()))[name], dict)]
    print(f"{'candidate':>16} {'mean recall@1%':>15} {'min recall@1%':>14} {'mean AUROC':>11}")
    summary = {}
    for name in names:
        recalls = [r[name]["recall_at_1pct"] for r in results.values()]
        aurocs = [r[name]["auroc"] for r in results.values()]
        summary[name] = {"mean_recall_at_1pct": float(np.mean(recalls)),
                         "min_recall_at_1pct": float(np.min(recalls)),
                         "mean_auroc": float(np.mean(aurocs))}
        print(f"{name:>16} {summary[name]['mean_recall_at_1pct']:>15.3f} "
              f"{summary[name]['min_recall_at_1pct']:>14.3f} {summary[name]['mean_auroc']:>11.3f}")
    print(json.dumps({"n": args.n, "folds": args.folds, "protocols": protocols,
                      "summary": summary, "by_protocol": results}))


if __name__ == "__main__":
    main()
