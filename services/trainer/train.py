"""Train a model version offline and export it in TensorFlow Serving's layout.

Training data comes from any mix of: traffic generated on the spot by real protocol
implementations (--generate), heads files written by `headbits generate` (--heads), captures
(--captures, labelled by a Zeek conn.log beside each capture or the port map), the shared capture
corpus with its LABELS.tsv (--corpus) and the capstone's hex folders (--hex-folder).

The new version is written to <models>/headbits/<version>/ (or published under model_store, an
s3:// or gs:// bucket) and is not served until `headbits model promote` moves a label to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headbits.common.avro import read_heads_file
from headbits.common.model_repository import MODEL_NAME, RepositoryError, RepositoryLocation
from headbits.common.model_store import ModelStore, open_store
from headbits.common.protocols import UNKNOWN
from headbits.common.settings import add_settings_arguments, setting, settings_from_args
from headbits.trainer import dataset
from headbits.trainer.dataset import LabelledHeads

if TYPE_CHECKING:
    from headbits.trainer.model import TrainedModel


@dataclass(frozen=True)
class TrainSettings(RepositoryLocation):
    n: int = setting(16, "payload bytes per direction the model reads (8, 16, 32 or 64)")
    baseline: tuple[str, ...] = setting(
        (), "protocols the autoencoder learns as normal (empty: all labelled traffic)"
    )
    min_class_rows: int = setting(20, "training rows a protocol needs to become a class")
    validation_folds: int = setting(5, "1/K of the capture groups is held back for validation")
    max_epochs: int = setting(60, "upper bound on epochs; early stopping usually ends sooner")
    calibration_folds: int = setting(
        0, "also train K models, each without 1/K of the training capture groups, so that every "
           "training row gives a held-out novelty score for the tail calibration (cross-fitting: "
           "K+1 trainings; 0 calibrates on the validation groups alone)")
    target_fpr: float = setting(0.001, "false-positive rate the threshold is calibrated to")
    seed: int = setting(0, "seed for the split, the initialisation and generated traffic")
    tensorboard_dir: Path | None = setting(
        None, "write TensorBoard event files of each run under <dir>/<model>-v<version>/ "
              "(losses and metrics per epoch, the graph, thresholds, error histograms)")


@dataclass(frozen=True)
class TrainedVersion:
    version: int
    location: str  # where the store published it: a directory or a bucket URL
    classes: tuple[str, ...]
    train_rows: int
    validation_rows: int


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("training data (any mix)")
    data.add_argument("--generate", type=int, default=0, metavar="SESSIONS",
                      help="generate SESSIONS sessions per protocol with real implementations")
    data.add_argument("--heads", type=Path, nargs="*", default=[], metavar="AVRO",
                      help="heads files written by `headbits generate`")
    data.add_argument("--captures", type=Path, nargs="*", default=[], metavar="PCAP",
                      help="pcap/pcapng files or folders of them")
    data.add_argument("--labels", type=Path, metavar="TSV",
                      help="per-flow labels for --captures in a corpus's LABELS.tsv format "
                           "(its file column is relative to the TSV's folder)")
    data.add_argument("--corpus", type=Path, metavar="DIR",
                      help="a capture corpus with MANIFEST.tsv and LABELS.tsv")
    data.add_argument("--hex-folder", type=Path, metavar="DIR",
                      help="the capstone's training folder (one hex line per connection)")


def labelled_captures(args: argparse.Namespace, progress: bool = True) -> LabelledHeads:
    from headbits.collector.pcap import expand_captures

    root = args.labels.parent if args.labels else None
    return dataset.from_captures(expand_captures(args.captures), root=root,
                                 dataset_labels_tsv=args.labels, progress=progress)


def load_training_data(args: argparse.Namespace, seed: int, progress: bool = True) -> LabelledHeads:
    """Every source the arguments name."""
    return load_made_data(args, seed, progress).extend(load_captured_data(args, progress))


def load_made_data(args: argparse.Namespace, seed: int, progress: bool = True) -> LabelledHeads:
    """Heads that are not captures of a network: generated traffic, heads files, hex folders."""
    data = LabelledHeads()
    if args.generate:
        from headbits.traffic import generate

        heads = generate(sessions_per_protocol=args.generate, seed=seed, progress=progress)
        data.extend(dataset.from_heads(heads, "generated"))
    for path in args.heads:
        data.extend(dataset.from_heads(read_heads_file(path), f"heads:{path.name}"))
    if args.hex_folder:
        data.extend(dataset.from_hex_folder(args.hex_folder))
    return data


def load_captured_data(args: argparse.Namespace, progress: bool = True) -> LabelledHeads:
    """Flows of real captures: --captures (labelled by --labels or conn.logs) and --corpus."""
    data = LabelledHeads()
    if args.captures:
        data.extend(labelled_captures(args, progress))
    if args.corpus:
        data.extend(dataset.from_corpus(args.corpus, progress=progress))
    return data


def fit(
    data: LabelledHeads, settings: TrainSettings, progress: bool = True,
    log_dir: Path | None = None,
) -> tuple[object, LabelledHeads, LabelledHeads]:
    """Split by group, choose classes, train. Returns (TrainedModel, train rows, validation rows).

    Rows nobody could label are left out: they are neither normal traffic we can vouch for nor
    a protocol the classifier could learn. So are mid-stream heads (a gap flag: the stream's
    start was not seen): their bytes are no protocol's opening, and learning them as normal
    would teach the model that anything goes.
    """
    from headbits.trainer.model import TrainingConfig, train

    labelled = data.where(np.array([label != UNKNOWN and not head.midstream
                                    for label, head in zip(data.labels, data.heads, strict=True)],
                                   dtype=bool))
    if len(labelled) == 0:
        raise ValueError("no labelled training rows: give --generate, --heads, --captures ...")
    fold = dataset.group_fold(labelled.groups, settings.validation_folds, settings.seed)
    train_rows, validation_rows = labelled.where(fold != 0), labelled.where(fold == 0)
    if len(validation_rows) == 0 or len(train_rows) == 0:
        raise ValueError(
            f"{len(set(labelled.groups))} capture group(s) cannot be split for validation: "
            "give more captures or generated sessions"
        )
    classes = dataset.choose_classes(train_rows.labels, settings.min_class_rows)
    config = TrainingConfig(n=settings.n, max_epochs=settings.max_epochs,
                            target_fpr=settings.target_fpr, seed=settings.seed)

    def train_on(rows: LabelledHeads, **kwargs) -> TrainedModel:
        return train(
            rows.batch(settings.n), dataset.class_indices(rows.labels, classes), classes,
            validation_rows.batch(settings.n),
            dataset.class_indices(validation_rows.labels, classes), config,
            autoencoder_rows=normal_rows(rows, settings.baseline),
            validation_autoencoder_rows=normal_rows(validation_rows, settings.baseline),
            novelty_labels=rows.labels, **kwargs)

    cross_fitted = None
    if settings.calibration_folds:
        cross_fitted = cross_fitted_tails(train_rows, settings, train_on)
    trained = train_on(train_rows, progress=progress, log_dir=log_dir,
                       cross_fitted_tails=cross_fitted)
    return trained, train_rows, validation_rows


def cross_fitted_tails(
    train_rows: LabelledHeads, settings: TrainSettings,
    train_on: Callable[..., TrainedModel],
) -> tuple[np.ndarray, np.ndarray]:
    """(novelty scores, predicted class indices) of every training row with payload, each from
    a model trained without its capture group's fold (cross-conformal over groups).

    Split-conformal calibration on the validation groups alone leaves a few thousand rows from
    a few hundred files: the smallest tail probability it resolves is about 1/m, and a handful
    of odd files set the top of the distribution. Cross-fitting makes every training row a
    held-out row too. Each fold model trained on less data than the exported one, so its
    scores lean high: the resulting alert rate errs below the target, not above.
    """
    fold = dataset.group_fold(train_rows.groups, settings.calibration_folds, settings.seed + 1)
    scores, predicted = [], []
    for k in range(settings.calibration_folds):
        inside, outside = train_rows.where(fold != k), train_rows.where(fold == k)
        if len(inside) == 0 or len(outside) == 0:
            continue
        held_out = outside.batch(settings.n)
        held_out = held_out.select(held_out.head_lengths.sum(axis=1) > 0)
        result = train_on(inside, progress=False).score(held_out)
        scores.append(result.novelty_score)
        predicted.append(np.argmax(result.protocol_probs, axis=1))
    if not scores:
        raise ValueError("the training capture groups cannot be split for cross-fitting: "
                         "give more captures or set calibration_folds to 0")
    return np.concatenate(scores), np.concatenate(predicted)


def normal_rows(data: LabelledHeads, baseline: tuple[str, ...]) -> np.ndarray:
    if not baseline:
        return np.ones(len(data), dtype=bool)
    return np.isin(data.label_array(), list(baseline))


def describe(data: LabelledHeads) -> dict:
    return {
        "rows": len(data),
        "groups": len(set(data.groups)),
        "labels": dict(data.counts().most_common()),
        "label_sources": dict(sorted(Counter(data.label_sources).items())),
    }


def train_and_export(
    data: LabelledHeads, settings: TrainSettings, sources: list[str], progress: bool = True,
    evaluate: Callable[[TrainedModel], dict] | None = None, store: ModelStore | None = None,
) -> TrainedVersion:
    """Fit and publish a version in `store` (default: the settings' store of model headbits);
    `evaluate(trained)` returns more headbits.json entries (e.g. held-out metrics), computed
    before export so the version appears with them, atomically. The version number is the
    store's next one, read before training."""
    from headbits.trainer.export import publish_model

    started = time.time()
    store = store or open_store(settings, MODEL_NAME)
    version = store.next_version()
    log_dir = None
    if settings.tensorboard_dir is not None:
        log_dir = settings.tensorboard_dir / f"{MODEL_NAME}-v{version}"
    trained, train_rows, validation_rows = fit(data, settings, progress, log_dir)
    metadata = {
        "training": {
            "sources": sources,
            "settings": {k: str(v) for k, v in dataclasses.asdict(settings).items()},
            "train": describe(train_rows),
            "validation": describe(validation_rows),
            "window": _time_window(train_rows),
            "seconds": round(time.time() - started, 1),
        },
    }
    if evaluate is not None:
        metadata.update(evaluate(trained))
    location = publish_model(trained, store, version=version, metadata=metadata)
    return TrainedVersion(version, location, tuple(trained.classes), len(train_rows),
                          len(validation_rows))


def _time_window(data: LabelledHeads) -> dict:
    times = [h.ts for h in data.heads if h.ts > 0]
    return {"first_ts": min(times, default=0.0), "last_ts": max(times, default=0.0)}


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_settings_arguments(parser, TrainSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(TrainSettings, args)
    data = load_training_data(args, settings.seed)
    for error in data.errors:
        print(f"warning: {error}", file=sys.stderr)
    sources = [name for name in ("generate", "heads", "captures", "corpus", "hex_folder")
               if getattr(args, name)]
    try:
        version = train_and_export(data, settings, sources)
    except (ValueError, RepositoryError) as error:
        print(f"headbits train: {error}", file=sys.stderr)
        return 1
    print(f"exported {version.location} (classes: {', '.join(version.classes)}; "
          f"{version.train_rows} training rows, {version.validation_rows} validation rows)")
    return 0
