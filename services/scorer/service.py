"""Run the scorer service: feature records from Kafka -> model scores -> alerts to Kafka.

Consumes headbits.features.v2 in batches (`.v1` records too), from message to numpy with no
per-row Python, scores them through a scoring backend (the in-process
SavedModel, or TF Serving over gRPC), and writes every alert (reconstruction error over the
threshold, or predicted protocol != expected protocol) to headbits.alerts.v1, keyed by uid; with
--write-scores, every score to headbits.scores.v2 as well (one Arrow batch per sensor, or Avro
records with topic_format v1). With --shadow-label canary (TF Serving
backend) the canary version scores the same rows: its scores go to the scores topic beside the
primary's, never to the alerts, and Prometheus counts where the two disagree. Records that cannot
be scored (wrong N, undecodable, refused by the model on their own: see `score_bisecting`) go to
headbits.deadletter.v1. Offsets are stored only after the outputs are acknowledged; while the
backend is unavailable the same batch is retried and nothing is stored.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge

from headbits.common.kafka import AlertsTopic, DriftTopic, FeaturesTopic, ScoresTopic
from headbits.common.logs import fields
from headbits.common.model_repository import MODEL_NAME
from headbits.common.service import (
    Output,
    Runtime,
    ServiceSettings,
    Stage,
    TableOutput,
    Transformed,
    run_stage,
)
from headbits.common.serving_tls import ServingTLS
from headbits.common.settings import (
    SettingsError,
    add_settings_arguments,
    setting,
    settings_from_args,
)
from headbits.featurizer.bits import HeadBatch
from headbits.scorer.alert_rules import (
    DEFAULT_RULE,
    AlertRule,
    TableRows,
    Verdicts,
    alert_records,
    check_features_table,
    head_batch_table,
    last_per_uid_rows,
    score_table,
    verdicts_of_table,
)
from headbits.scorer.backend import (
    BackendUnavailable,
    Disagreement,
    Scores,
    ScoringBackend,
    disagreement,
)
from headbits.scorer.drift import DriftMonitor
from headbits.scorer.emit import AlertEmitter, EmitSettings
from headbits.scorer.zeek_notices import ZeekAlertPublisher


@dataclass(frozen=True)
class ScorerSettings(
    ServiceSettings, FeaturesTopic, AlertsTopic, ScoresTopic, DriftTopic, EmitSettings,
    ServingTLS,
):
    batch_size: int = setting(
        8000, "largest batch consumed, scored and produced at once (rows): the model call's cost "
              "is mostly per call (the whole pipeline measured 14-17 us of CPU per connection at "
              "8000 against 19 at 2000); keep it within TF Serving's max_batch_size (8192 in the "
              "chart), or batches are halved until accepted")
    backend: str = setting("inprocess", "inprocess (SavedModel in this process) or tfserving")
    model_dir: Path | None = setting(
        None, "inprocess: a model base dir (latest <base>/headbits/<version>) or a version dir"
    )
    inprocess_threads: int = setting(
        0, "inprocess: TensorFlow threads of the model (0: TensorFlow's default); 1 costs the "
           "least CPU per row when the scorer shares its cores with other processes")
    serving_target: str = setting(
        "127.0.0.1:8500", "tfserving: gRPC target (host:port, or dns:///host:port to spread over "
        "every address a headless Service resolves to)")
    serving_model_name: str = setting(MODEL_NAME, "tfserving: the model's name in TF Serving")
    serving_deadline_seconds: float = setting(
        10.0, "tfserving: deadline of one Predict; past it the call is retried, then the batch")
    version_label: str = setting("stable", "tfserving: the version label to score with")
    shadow_label: str | None = setting(
        None, "tfserving: also score with this label (e.g. canary); its scores go to the scores "
              "topic next to the primary's, and metrics count where the two disagree")
    write_scores: bool = setting(False, "also write every score to the scores topic")
    alert_rate: float = setting(
        0.001, "novel-protocol alerts at this calibrated tail probability or below: about this "
               "share of normal connections alerts; change it without retraining")
    alert_midstream: bool = setting(
        False, "let heads whose stream start was not seen (gap flag) alert; they are always "
               "scored and marked midstream")
    write_drift: bool = setting(True, "write drift measurements to the drift topic")
    drift_interval_seconds: float = setting(60.0, "how often drift is measured and written")
    drift_window_rows: int = setting(5000, "scores per protocol and per sensor drift looks at")
    drift_min_rows: int = setting(500, "scores a slice needs before its drift can cross")
    drift_psi_threshold: float = setting(
        0.25, "PSI of a slice's tail probabilities against uniform above which it has drifted "
              "(0.1 moderate, 0.25 large); a crossing logs a warning and marks the record")
    zeek_alerts_url: str | None = setting(
        None, "also publish alerts to this Zeek WebSocket server (ws://sensor:27759/v1/messages/"
              "json) as HeadBits::alert events, which the package logs as notices")


class ScorerStage(Stage):
    name = "scorer"
    input_schema = "features"
    retryable_errors = (BackendUnavailable,)

    def __init__(
        self, backend: ScoringBackend, alerts_topic: str, scores_topic: str | None,
        shadow: ScoringBackend | None = None, rule: AlertRule = DEFAULT_RULE,
        drift: DriftReporter | None = None, notices: ZeekAlertPublisher | None = None,
        emitter: AlertEmitter | None = None,
    ):
        if shadow is not None and scores_topic is None:
            raise ValueError("shadow scoring writes to the scores topic: give scores_topic")
        self._backend = backend
        self._alerts_topic = alerts_topic
        self._scores_topic = scores_topic
        self._shadow = shadow
        self._rule = rule
        self._drift = drift
        self._notices = notices
        self.emitter = emitter or AlertEmitter()
        self.shadow_metrics: ShadowMetrics | None = None

    def attach(self, runtime: Runtime) -> None:
        if self._shadow is not None:
            self.shadow_metrics = ShadowMetrics(runtime.metrics.registry)
        if self._drift is not None:
            self._drift.attach(runtime)
        self.emitter.attach(runtime)

    def output_schemas(self) -> dict[str, str]:
        schemas = {self._alerts_topic: "alert", **self.emitter.output_schemas()}
        if self._scores_topic:
            schemas[self._scores_topic] = "score"
        if self._drift is not None:
            schemas[self._drift.topic] = "drift"
        return schemas

    def transform(self, table: pa.Table) -> Transformed:
        model_n = self._backend.info().n
        latest = last_per_uid_rows(table)
        unique = table if len(latest) == table.num_rows else table.take(pa.array(latest))
        refused_rows = check_features_table(unique, model_n)
        rejected = [(int(latest[row]), problem) for row, problem in refused_rows]
        if refused_rows:
            keep = np.ones(unique.num_rows, bool)
            keep[[row for row, _ in refused_rows]] = False
            latest, unique = latest[keep], unique.filter(pa.array(keep))
        if unique.num_rows == 0:
            return Transformed([], rejected)
        batch = head_batch_table(unique, model_n)
        parts, refused = score_bisecting(self._backend, batch)
        rejected += [(int(latest[row]), f"the model refused this record: {reason}")
                     for row, reason in refused]
        alerts: list[dict] = []
        everything: list[pa.Table] = []
        sensors: list[pa.ChunkedArray] = []
        drifts: list[dict] = []
        for rows, scores in parts:
            part = unique.slice(rows.start, rows.stop - rows.start)
            part_records = TableRows(part)
            part_batch = batch.select(rows)
            verdicts = verdicts_of_table(part, scores, self._rule)
            alerts += alert_records(part_records, part_batch, scores, verdicts)
            if self._scores_topic:
                everything.append(score_table(part, scores, verdicts))
                sensors.append(part.column("sensor"))
                if self._shadow is not None:
                    shadow = self._shadow_scores(part, scores)
                    if shadow is not None:
                        everything.append(shadow)
                        sensors.append(part.column("sensor"))
            if self._drift is not None:
                drifts += self._drift.observe(
                    part.column("sensor").to_numpy(zero_copy_only=False), scores, verdicts)
        # Emit-time step (suppression, learning, aggregation, SIEM forms): scorer/emit.py.
        marks = ScoreMarks(everything)
        emitted = self.emitter.emit(unique.column("sensor").to_pylist(), alerts, marks)
        everything = marks.applied()
        alerts = emitted.alerts
        outputs: list[Output | TableOutput] = [
            Output(self._alerts_topic, alerts, [a["uid"] for a in alerts]), *emitted.outputs]
        if self._notices is not None:
            self._notices.publish([alert for alert in alerts if not alert["learning"]])
        if self._scores_topic:
            outputs.append(TableOutput(self._scores_topic, pa.concat_tables(everything),
                                       pa.chunked_array(sensors)))
        if drifts:
            keys = [f"{d['kind']}/{d['key']}" for d in drifts]
            outputs.append(Output(self._drift.topic, drifts, keys))
        return Transformed(outputs, rejected)

    def _shadow_scores(self, part: pa.Table, primary: Scores) -> pa.Table | None:
        """The shadow version's Score table of the same rows. A shadow that cannot answer
        never holds up the primary's alerts: its rows are missing and the failure counted."""
        try:
            shadow_n = self._shadow.info().n
            shadow = self._shadow.score(head_batch_table(part, shadow_n))
        except (BackendUnavailable, ValueError):
            if self.shadow_metrics is not None:
                self.shadow_metrics.failures.inc()
            return None
        if self.shadow_metrics is not None:
            self.shadow_metrics.observe(disagreement(primary, shadow))
        return score_table(part, shadow, verdicts_of_table(part, shadow, self._rule))


class ScoreMarks:
    """The Score tables of a batch as the emit step's Score records: rows become records (uid,
    model_version) only when the step walks them, which it does only for a batch with a
    suppressed alert; `applied()` writes back the `suppressed_by` it set."""

    def __init__(self, tables: list[pa.Table]) -> None:
        self._tables = tables
        self._records: list[list[dict]] | None = None

    def __iter__(self):
        if self._records is None:
            self._records = [
                [{"uid": uid, "model_version": version} for uid, version in zip(
                    table.column("uid").to_pylist(), table.column("model_version").to_pylist(),
                    strict=True)]
                for table in self._tables]
        return (record for records in self._records for record in records)

    def applied(self) -> list[pa.Table]:
        if self._records is None:
            return self._tables
        column = "suppressed_by"
        return [table.set_column(table.schema.get_field_index(column), column, pa.array(
                    [record.get(column, "") for record in records], pa.string()))
                for table, records in zip(self._tables, self._records, strict=True)]


def score_bisecting(
    backend: ScoringBackend, batch: HeadBatch
) -> tuple[list[tuple[slice, Scores]], list[tuple[int, str]]]:
    """Scores of every part of `batch` the backend accepts, and (row, reason) for each row it
    refuses on its own.

    A `ValueError` from a backend means "this input can never be scored" (TF Serving answers a
    batch above its `max_batch_size` that way, and a poison row too). Retrying the same batch
    would crash-loop the scorer on it, and dead-lettering the whole batch would throw good rows
    away, so a refused batch is halved until its parts are accepted: a too-large batch is scored
    in parts, and only rows refused alone are rejected. Parts come back in row order; the cost is
    at most 2 x rows calls, paid only when the backend refuses. `BackendUnavailable` passes
    through (the caller retries the whole batch).
    """
    parts: list[tuple[slice, Scores]] = []
    refused: list[tuple[int, str]] = []
    pending = [(0, len(batch))]
    while pending:
        start, stop = pending.pop()
        rows = slice(start, stop)
        try:
            parts.append((rows, backend.score(batch.select(rows))))
        except ValueError as error:
            if stop - start == 1:
                refused.append((start, str(error)))
            else:
                middle = (start + stop) // 2
                pending += [(middle, stop), (start, middle)]
    return parts, refused


class ShadowMetrics:
    """How a shadow (canary) version disagrees with the primary on live traffic."""

    def __init__(self, registry: CollectorRegistry) -> None:
        common = {"registry": registry, "namespace": "headbits"}
        self.rows = Counter("shadow_scored_records", "records scored by the shadow version",
                            **common)
        self.disagreements = Counter(
            "shadow_disagreements", "records where the shadow's verdict differs from the "
            "primary's, by kind (anomaly: alert vs no alert; protocol: top class)", ["kind"],
            **common)
        self.error_delta = Gauge(
            "shadow_mean_abs_error_delta", "mean |reconstruction error difference| of the last "
            "batch", **common)
        self.failures = Counter("shadow_failures", "batches the shadow could not score",
                                **common)

    def observe(self, found: Disagreement) -> None:
        self.rows.inc(found.rows)
        self.disagreements.labels("anomaly").inc(found.anomaly_verdicts)
        self.disagreements.labels("protocol").inc(found.predicted_protocols)
        self.error_delta.set(found.mean_abs_error_delta)


class DriftReporter:
    """Feeds every scored batch to a DriftMonitor; each `interval` seconds it sets the drift
    gauges, logs a warning per slice that crossed, and returns the drift records to write."""

    def __init__(self, monitor: DriftMonitor, topic: str, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.monitor = monitor
        self.topic = topic
        self._interval = interval
        self._clock = clock
        self._due = clock() + interval
        self._scorer = f"{socket.gethostname()}/{os.getpid()}"
        self._log: logging.Logger | None = None
        self._psi: Gauge | None = None
        self._crossed: Gauge | None = None

    def attach(self, runtime: Runtime) -> None:
        common = {"registry": runtime.metrics.registry, "namespace": "headbits"}
        self._psi = Gauge("drift_psi", "PSI of recent tail probabilities against uniform, per "
                          "predicted protocol and per sensor", ["kind", "key"], **common)
        self._crossed = Gauge("drift_crossed", "1 while a slice's drift is over the threshold",
                              ["kind", "key"], **common)
        self._log = runtime.log

    def observe(self, sensors: Sequence[str] | np.ndarray, scores: Scores,
                verdicts: Verdicts) -> list[dict]:
        """Add a scored batch (`sensors` row-aligned with the scores)."""
        judged = ~verdicts.midstream  # a head whose start was not seen says nothing of drift
        rows = np.flatnonzero(judged)
        classes = scores.model.classes
        predicted = np.argmax(scores.protocol_probs[rows], axis=1)
        self.monitor.observe(np.asarray(classes, dtype=object)[predicted],
                             np.asarray(sensors, dtype=object)[rows],
                             scores.tail_probability[rows])
        if self._clock() < self._due:
            return []
        self._due = self._clock() + self._interval
        now = time.time()
        drifts = []
        for drift in self.monitor.report():
            if self._psi is not None and self._crossed is not None:
                self._psi.labels(drift.kind, drift.key).set(drift.psi)
                self._crossed.labels(drift.kind, drift.key).set(int(drift.crossed))
            if drift.crossed and self._log is not None:
                self._log.warning("drift: retraining is due", extra=fields(
                    kind=drift.kind, key=drift.key, psi=round(drift.psi, 3), rows=drift.rows,
                    low_tail_share=round(drift.low_tail_share, 4),
                    model_version=scores.model.version))
            drifts.append({
                "ts": now, "scorer": self._scorer, "model_name": scores.model.name,
                "model_version": scores.model.version, "kind": drift.kind, "key": drift.key,
                "rows": drift.rows, "psi": drift.psi, "low_tail_share": drift.low_tail_share,
                "crossed": drift.crossed,
            })
        return drifts


def make_drift(settings: ScorerSettings) -> DriftReporter | None:
    if not settings.write_drift:
        return None
    monitor = DriftMonitor(settings.drift_window_rows, settings.drift_min_rows,
                           settings.drift_psi_threshold, settings.alert_rate)
    return DriftReporter(monitor, settings.drift_topic, settings.drift_interval_seconds)


def make_backend(settings: ScorerSettings) -> ScoringBackend:
    if settings.backend == "inprocess":
        if settings.model_dir is None:
            raise SettingsError("--model-dir (HEADBITS_MODEL_DIR) is required with inprocess")
        from headbits.common.model_repository import resolve_version_dir
        from headbits.scorer.inprocess import SavedModelBackend

        return SavedModelBackend(resolve_version_dir(settings.model_dir),
                                 threads=settings.inprocess_threads)
    if settings.backend == "tfserving":
        from headbits.scorer.tfserving import TFServingBackend

        tls = settings.serving_tls_files()
        return TFServingBackend(settings.serving_target, settings.serving_model_name,
                                version_label=settings.version_label,
                                deadline_seconds=settings.serving_deadline_seconds, tls=tls)
    raise SettingsError(f"backend {settings.backend!r} is not inprocess or tfserving")


def make_shadow(settings: ScorerSettings, primary: ScoringBackend) -> ScoringBackend | None:
    """The shadow backend: the same TF Serving, another version label."""
    if settings.shadow_label is None:
        return None
    from headbits.scorer.tfserving import TFServingBackend

    if not isinstance(primary, TFServingBackend):
        raise SettingsError("--shadow-label (HEADBITS_SHADOW_LABEL) needs --backend tfserving")
    return primary.for_label(settings.shadow_label)


def configure(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, ScorerSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(ScorerSettings, args)
    backend = make_backend(settings)
    shadow = None
    notices = ZeekAlertPublisher(settings.zeek_alerts_url) if settings.zeek_alerts_url else None
    try:
        shadow = make_shadow(settings, backend)
        writes_scores = settings.write_scores or shadow is not None
        stage = ScorerStage(backend, settings.alerts_topic,
                            settings.scores_topic if writes_scores else None, shadow,
                            AlertRule(settings.alert_rate, settings.alert_midstream),
                            make_drift(settings), notices, AlertEmitter(settings))
        try:
            return run_stage(stage, settings, settings.features_topic)
        finally:
            stage.emitter.close()
    finally:
        if notices is not None:
            notices.close()
        if shadow is not None:
            shadow.close()
        backend.close()
