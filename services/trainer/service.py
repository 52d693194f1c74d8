"""Run the trainer: one retraining on the retained features window, gated, then exit (a CronJob).

Reads headbits.features.v2 (Arrow batches, or `.v1` records; a batch's rows are sampled in
bounded chunks) from the first record of the last --window-hours (by Kafka record timestamp)
on every partition up to the end offsets at start, with partitions assigned under a throw-away
group id and nothing committed: no service's consumer group notices. Only rows whose
protocol Zeek's parsers confirmed teach; port-labelled rows (what an attacker fakes) are counted
and left out, from training and from evaluation alike.
Undecodable records are counted and logged, not dead-lettered again (upstream did that).
Analysts' verdicts (headbits.feedback.v1) label their connections: benign ones teach as the
analyst's protocol, malicious ones are left out (trainer/feedback.py); the window counts both.
The most recent --holdout-fraction of the rows by connection time is held out; the rest trains a
new version (validation split by sensor and hour), published to <models>/headbits/<version>/ or,
with model_store, to an S3 or GCS bucket (common/model_store: never visible half-written).
Candidate and current `stable` are scored on the held-out rows; the figures and the gate's
verdict go into the version's headbits.json. A candidate that passes gets the `canary` label
(two-step write of TF Serving's model_config_file); the very first version, with no stable to
compare with, gets `stable` too (--first-version-stable). A rejected candidate stays in the
store, unlabelled. With --label-versions false (labels in a ConfigMap, moved by `helm upgrade`)
the stable version is the one TF Serving's config labels and a passing candidate is published
unlabelled.

  headbits trainer                     (retrain, gate, label canary)
  headbits trainer --promote-stable    (no training: stable -> the current canary's version)
  headbits model rollback              (stable back to the version it named before)

Exit codes: 0 a version was published, or the gate rejected it (the "candidate rejected" log
line names the failing metrics); 1 the run failed (too few labelled rows, Kafka or the model
repository unusable); 2 bad settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from headbits.common.avro import DecodeError, open_registry
from headbits.common.columnar import RowDecoder
from headbits.common.kafka import (
    DriftTopic,
    FeaturesTopic,
    FeedbackTopic,
    KafkaConnection,
    KafkaException,
    read_offset_ranges,
    window_offsets,
)
from headbits.common.logs import LogLines, configure_logging, fields
from headbits.common.model_repository import RepositoryError, config_labels
from headbits.common.records import MAX_HEAD_BYTES
from headbits.common.settings import (
    SettingsError,
    SettingsT,
    add_settings_arguments,
    setting,
    settings_from_args,
)
from headbits.trainer.controller import drift_crossings
from headbits.trainer.dataset import LabelledHeads
from headbits.trainer.feedback import read_verdicts
from headbits.trainer.gate import GateSettings, failing_metrics, gate_failures, holdout_metrics
from headbits.trainer.rollout import ModelSettings, Repository
from headbits.trainer.train import TrainSettings, describe
from headbits.trainer.window import (
    ROW_BYTES,
    StratifiedReservoir,
    WindowCounts,
    labelled_heads,
    most_recent,
    screen,
)

if TYPE_CHECKING:
    from headbits.trainer.model import TrainedModel

STABLE = "stable"
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class TrainerSettings(
    GateSettings, TrainSettings, ModelSettings, KafkaConnection, FeaturesTopic, DriftTopic,
    FeedbackTopic,
):
    """Kafka, model repository (`headbits model`'s names), training and gate settings in one.

    It extends the Kafka connection and the features topic, not the streaming services'
    ServiceSettings: the trainer joins no consumer group and serves no /metrics; its exit code
    and JSON log lines report the run.
    """

    window_hours: float = setting(24.0, "train on the features of the last this many hours")
    holdout_fraction: float = setting(
        0.2, "the most recent part of the window (by connection time) held out to evaluate on"
    )
    max_rows: int = setting(
        200_000, "parser-labelled rows kept at most: a sample per protocol and sensor of a "
                 "larger window (small ones whole, large ones sharing the rest)"
    )
    sample_memory_mb: int = setting(
        2048, "memory the window's sample may use; caps the rows kept below max_rows when "
              "smaller (about 1.5 kB a row)"
    )
    min_rows: int = setting(1000, "fewer parser-labelled rows in the window: fail, train nothing")
    candidate_label: str = setting("canary", "label a candidate that passes the gate gets")
    first_version_stable: bool = setting(
        True, "label the first version (no stable to compare with) stable as well"
    )
    read_batch_size: int = setting(5000, "records fetched and decoded at once")
    label_versions: bool = setting(
        True, "move labels after publishing: canary to a candidate that passes the gate (and "
              "stable to the first version) in config_file; false where labels are managed "
              "elsewhere (the chart's tfserving.versionLabels in a ConfigMap): the stable "
              "version compared with is the one config_file labels, and the candidate is "
              "published unlabelled")
    only_on_drift: bool = setting(
        False, "train only if a scorer reported drift of the stable version in the window (the "
               "drift topic); otherwise log why not and exit 0, so a frequent CronJob retrains "
               "when traffic changed and not on every run")
    log_level: str = setting("info", "debug, info, warning or error")

    def __post_init__(self) -> None:
        if self.window_hours <= 0:
            raise SettingsError(f"window_hours must be positive, not {self.window_hours}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise SettingsError(f"holdout_fraction {self.holdout_fraction} is not in (0, 1)")
        if self.sample_memory_mb < 1:
            raise SettingsError(f"sample_memory_mb must be positive, not {self.sample_memory_mb}")
        if not 1 <= self.min_rows <= self.max_rows:
            raise SettingsError(f"need 1 <= min_rows ({self.min_rows}) <= max_rows "
                                f"({self.max_rows})")


class TrainerError(RuntimeError):
    """The run cannot produce a version; the message says why and what to change."""


def subset(cls: type[SettingsT], settings: TrainerSettings) -> SettingsT:
    """The `cls` settings (one of TrainerSettings' bases) with TrainerSettings' values."""
    return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


@dataclass
class Window:
    """The sampled parser-labelled records of a window and what reading it found."""

    records: list[dict]
    counts: WindowCounts
    start: float
    end: float

    def describe(self) -> dict:
        return {"start": self.start, "end": self.end, **self.counts.to_dict(),
                "sampled_rows": len(self.records)}


def read_window(settings: TrainerSettings, log: logging.Logger, now: float) -> Window:
    """Decode and screen the window's records, keeping a uniform sample of the usable ones."""
    topic = settings.features_topic
    since = now - settings.window_hours * 3600
    ranges = window_offsets(settings, topic, int(since * 1000))
    log.info("reading window", extra=fields(
        topic=topic, since=since, partitions=len(ranges),
        records=sum(end - start for start, end in ranges.values())))
    registry = open_registry(settings)
    codec = RowDecoder("features", topic, registry)
    counts = WindowCounts()
    verdicts = read_verdicts(settings, settings.feedback_topic, since)  # analysts' labels
    sample = StratifiedReservoir(sample_rows(settings), settings.seed)
    first_undecodable = ""
    last_report = time.monotonic()
    records: list[dict] = []
    for messages in read_offset_ranges(settings, topic, ranges, settings.read_batch_size):
        for message in messages:
            try:
                records += codec.rows(message.value(), message.headers())
            except DecodeError as error:
                counts.undecodable += 1
                if not first_undecodable:
                    first_undecodable = f"{topic}/{message.partition()}/{message.offset()}: {error}"
            if len(records) >= settings.read_batch_size:  # a .v2 message holds many rows:
                sample.add(screen(verdicts.apply(records, counts), settings.n, counts))
                records = []  # bounded, whatever the format
        if time.monotonic() - last_report > PROGRESS_SECONDS:
            last_report = time.monotonic()
            log.info("reading", extra=fields(**counts.to_dict()))
    sample.add(screen(verdicts.apply(records, counts), settings.n, counts))
    counts.undecodable += codec.bad_rows
    if counts.undecodable:
        log.warning("undecodable records skipped (dead-lettered upstream already)", extra=fields(
            count=counts.undecodable, first=first_undecodable))
    if counts.unusable:
        log.warning("unusable records skipped", extra=fields(
            count=counts.unusable, reasons=dict(counts.unusable_reasons),
            first=counts.first_unusable))
    counts.duplicates = sample.duplicates
    counts.strata = sample.strata()
    log.info("window read", extra=fields(**counts.to_dict(), sampled_rows=len(sample.items)))
    return Window(sample.items, counts, since, now)


def sample_rows(settings: TrainerSettings) -> int:
    """Rows the window's sample may keep: max_rows, or fewer when the memory budget says so."""
    return max(1, min(settings.max_rows, settings.sample_memory_mb * 2**20 // ROW_BYTES))


def version_figures(version_dir: Path, holdout: LabelledHeads, baseline: tuple[str, ...]) -> dict:
    """Held-out figures of an exported version, scored as the scorer scores with it."""
    from headbits.scorer.inprocess import SavedModelBackend

    backend = SavedModelBackend(version_dir)
    try:
        batch = holdout.batch(MAX_HEAD_BYTES)
        return holdout_metrics(backend.score(batch), batch, holdout, baseline)
    finally:
        backend.close()


class Candidate:
    """The evaluation `train_and_export` runs on the trained model before it is exported."""

    def __init__(self, settings: TrainerSettings, window: Window, holdout: LabelledHeads,
                 stable: tuple[int, dict] | None) -> None:
        self.settings = settings
        self.window = window
        self.holdout = holdout
        self.stable = stable
        self.figures: dict = {}
        self.failures: list[str] = []

    def __call__(self, trained: TrainedModel) -> dict:
        batch = self.holdout.batch(MAX_HEAD_BYTES)
        self.figures = holdout_metrics(trained.score(batch), batch, self.holdout,
                                       self.settings.baseline)
        stable_figures = self.stable[1] if self.stable else None
        self.failures = gate_failures(self.figures, stable_figures, self.settings)
        return {
            "metrics": self.figures,
            "evaluation": {
                "holdout": {**describe(self.holdout), "fraction": self.settings.holdout_fraction},
                "stable": ({"version": self.stable[0], "metrics": self.stable[1]}
                           if self.stable else None),
                "gate": {"passed": not self.failures, "failures": self.failures,
                         "rules": dataclasses.asdict(subset(GateSettings, self.settings))},
            },
            "window": {"topic": self.settings.features_topic, **self.window.describe()},
        }


def current_labels(settings: TrainerSettings, repository: Repository) -> dict[str, int]:
    """The labels now: the rollout state's, or with label_versions off, the config's."""
    if settings.label_versions:
        return repository.state.labels
    return config_labels(settings.config_file, settings.model_name)


def retrain(settings: TrainerSettings, log: logging.Logger) -> int:
    from headbits.trainer.train import train_and_export

    repository = Repository(subset(ModelSettings, settings), out=LogLines(log))
    labels = current_labels(settings, repository)
    if settings.only_on_drift:
        stable_version = labels.get(STABLE)
        since = time.time() - settings.window_hours * 3600
        crossings = drift_crossings(settings, settings.drift_topic, stable_version, since)
        if not crossings:
            log.info("no drift of the stable version in the window: nothing to retrain",
                     extra=fields(stable=stable_version, drift_topic=settings.drift_topic))
            return 0
        log.info("drift reported: retraining", extra=fields(
            stable=stable_version, crossings=len(crossings),
            slices=sorted({f"{c['kind']}/{c['key']}" for c in crossings})))
    window = read_window(settings, log, time.time())
    if window.counts.parser_labelled < settings.min_rows:
        raise TrainerError(
            f"{window.counts.parser_labelled} parser-labelled rows in the last "
            f"{settings.window_hours:g} h of {settings.features_topic} "
            f"({window.counts.port_labelled} port-labelled rows do not count), fewer than "
            f"min_rows={settings.min_rows}: nothing trained")
    data = labelled_heads(window.records)
    held_out = most_recent([head.ts for head in data.heads], settings.holdout_fraction)
    training, holdout = data.where(~held_out), data.where(held_out)
    stable = None
    stable_version = labels.get(STABLE)
    if stable_version is not None:
        with tempfile.TemporaryDirectory(prefix="headbits-stable-") as scratch:
            version_dir = repository.store.fetch(stable_version, Path(scratch))
            stable = (stable_version, version_figures(version_dir, holdout, settings.baseline))
        log.info("stable evaluated", extra=fields(version=stable_version, **stable[1]))
    candidate = Candidate(settings, window, holdout, stable)
    log.info("training", extra=fields(rows=len(training), holdout_rows=len(holdout),
                                      groups=len(set(training.groups))))
    started = time.monotonic()
    trained = train_and_export(training, subset(TrainSettings, settings),
                               [f"kafka:{settings.features_topic}"], progress=False,
                               evaluate=candidate, store=repository.store)
    version = trained.version
    log.info("trained", extra=fields(
        version=version, seconds=round(time.monotonic() - started, 1), classes=trained.classes,
        train_rows=trained.train_rows, validation_rows=trained.validation_rows,
        **candidate.figures))
    if candidate.failures:
        log.warning("candidate rejected", extra=fields(
            version=version, failing_metrics=failing_metrics(candidate.failures),
            reasons=candidate.failures, labels=labels))
        return 0
    if not settings.label_versions:
        log.info("published", extra=fields(
            version=version, location=trained.location, labels=[],
            next_step=f"name it in the labels of {settings.config_file} (the chart: "
                      f"tfserving.versionLabels.{settings.candidate_label})"))
        return 0
    repository.promote(version, settings.candidate_label)
    labels = [settings.candidate_label]
    if stable is None and settings.first_version_stable:
        repository.promote(version, STABLE)
        labels.append(STABLE)
    log.info("published", extra=fields(version=version, labels=labels,
                                       config_file=str(settings.config_file)))
    return 0


def promote_stable(settings: TrainerSettings, log: logging.Logger) -> int:
    if not settings.label_versions:
        raise RepositoryError("label_versions is false: labels are managed where "
                              f"{settings.config_file} comes from, not by the trainer")
    repository = Repository(subset(ModelSettings, settings), out=LogLines(log))
    canary = repository.state.labels.get(settings.candidate_label)
    if canary is None:
        raise RepositoryError(f"no {settings.candidate_label} version to promote to {STABLE}")
    repository.promote(canary, STABLE)
    log.info("published", extra=fields(version=canary, labels=[STABLE]))
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--promote-stable", action="store_true",
        help="train nothing: move the stable label to the current canary's version")
    add_settings_arguments(parser, TrainerSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(TrainerSettings, args)
    log = configure_logging("trainer", settings.log_level)
    try:
        if args.promote_stable:
            return promote_stable(settings, log)
        return retrain(settings, log)
    except (TrainerError, RepositoryError, KafkaException, TimeoutError, OSError,
            ValueError) as error:
        log.error("failed", extra=fields(error=str(error), kind=type(error).__name__))
        return 1
