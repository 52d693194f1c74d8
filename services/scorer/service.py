"""Run the scorer service: feature records from Kafka -> model scores -> alerts to Kafka.

Consumes headbits.features.v1 in batches, scores them through a scoring backend (the in-process
SavedModel, or TF Serving over gRPC), and writes every alert (reconstruction error over the
threshold, or predicted protocol != expected protocol) to headbits.alerts.v1, keyed by uid; with
--write-scores, every score to headbits.scores.v1 as well. With --shadow-label canary (TF Serving
backend) the canary version scores the same rows: its scores go to the scores topic beside the
primary's, never to the alerts, and Prometheus counts where the two disagree. Records that cannot
be scored (wrong N, undecodable, refused by the model on their own: see `score_bisecting`) go to
headbits.deadletter.v1. Offsets are stored only after the outputs are acknowledged; while the
backend is unavailable the same batch is retried and nothing is stored.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from headbits.common.kafka import AlertsTopic, FeaturesTopic, ScoresTopic
from headbits.common.service import (
    Output,
    Runtime,
    ServiceSettings,
    Stage,
    Transformed,
    run_stage,
)
from headbits.common.settings import (
    SettingsError,
    add_settings_arguments,
    setting,
    settings_from_args,
)
from headbits.featurizer.bits import HeadBatch
from headbits.scorer.alert_rules import (
    Verdicts,
    alert_records,
    check_features,
    head_batch,
    last_per_uid,
    score_dicts,
)
from headbits.scorer.backend import (
    BackendUnavailable,
    Disagreement,
    Scores,
    ScoringBackend,
    disagreement,
)


@dataclass(frozen=True)
class ScorerSettings(ServiceSettings, FeaturesTopic, AlertsTopic, ScoresTopic):
    backend: str = setting("inprocess", "inprocess (SavedModel in this process) or tfserving")
    model_dir: Path | None = setting(
        None, "inprocess: a model base dir (latest <base>/headbits/<version>) or a version dir"
    )
    serving_target: str = setting("127.0.0.1:8500", "tfserving: gRPC host:port")
    serving_deadline_seconds: float = setting(
        10.0, "tfserving: deadline of one Predict; past it the call is retried, then the batch")
    serving_tls: bool = setting(False, "tfserving: TLS to TF Serving (its --ssl_config_file)")
    serving_ca_file: Path | None = setting(
        None, "tfserving TLS: CA that signed the server's certificate (unset: system roots)")
    serving_cert_file: Path | None = setting(
        None, "tfserving TLS: client certificate, for mutual TLS (client_verify)")
    serving_key_file: Path | None = setting(None, "tfserving TLS: the client certificate's key")
    serving_server_name: str | None = setting(
        None, "tfserving TLS: name to verify in the server's certificate (unset: the host)")
    version_label: str = setting("stable", "tfserving: the version label to score with")
    shadow_label: str | None = setting(
        None, "tfserving: also score with this label (e.g. canary); its scores go to the scores "
              "topic next to the primary's, and metrics count where the two disagree")
    write_scores: bool = setting(False, "also write every score to the scores topic")


class ScorerStage(Stage):
    name = "scorer"
    input_schema = "features"
    retryable_errors = (BackendUnavailable,)

    def __init__(
        self, backend: ScoringBackend, alerts_topic: str, scores_topic: str | None,
        shadow: ScoringBackend | None = None,
    ):
        if shadow is not None and scores_topic is None:
            raise ValueError("shadow scoring writes to the scores topic: give scores_topic")
        self._backend = backend
        self._alerts_topic = alerts_topic
        self._scores_topic = scores_topic
        self._shadow = shadow
        self.shadow_metrics: ShadowMetrics | None = None

    def attach(self, runtime: Runtime) -> None:
        if self._shadow is not None:
            self.shadow_metrics = ShadowMetrics(runtime.metrics.registry)

    def output_schemas(self) -> dict[str, str]:
        schemas = {self._alerts_topic: "alert"}
        if self._scores_topic:
            schemas[self._scores_topic] = "score"
        return schemas

    def transform(self, records: list[dict]) -> Transformed:
        model_n = self._backend.info().n
        rejected, scorable, positions = [], [], []
        for index in last_per_uid(records):
            problem = check_features(records[index], model_n)
            if problem is None:
                scorable.append(records[index])
                positions.append(index)
            else:
                rejected.append((index, problem))
        if not scorable:
            return Transformed([], rejected)
        batch = head_batch(scorable, model_n)
        parts, refused = score_bisecting(self._backend, batch)
        rejected += [(positions[row], f"the model refused this record: {reason}")
                     for row, reason in refused]
        alerts: list[dict] = []
        everything: list[dict] = []
        for rows, scores in parts:
            part_records = scorable[rows]
            part_batch = batch.select(rows)
            verdicts = Verdicts.of(part_records, scores)
            alerts += alert_records(part_records, part_batch, scores, verdicts)
            if self._scores_topic:
                everything += score_dicts(part_records, scores, verdicts)
                if self._shadow is not None:
                    everything += self._shadow_scores(part_records, scores)
        outputs = [Output(self._alerts_topic, alerts, [a["uid"] for a in alerts])]
        if self._scores_topic:
            outputs.append(Output(self._scores_topic, everything, [s["uid"] for s in everything]))
        return Transformed(outputs, rejected)

    def _shadow_scores(self, records: list[dict], primary: Scores) -> list[dict]:
        """The shadow version's score records of the same rows. A shadow that cannot answer
        never holds up the primary's alerts: its records are missing and the failure counted."""
        try:
            shadow_n = self._shadow.info().n
            shadow = self._shadow.score(head_batch(records, shadow_n))
        except (BackendUnavailable, ValueError):
            if self.shadow_metrics is not None:
                self.shadow_metrics.failures.inc()
            return []
        if self.shadow_metrics is not None:
            self.shadow_metrics.observe(disagreement(primary, shadow))
        return score_dicts(records, shadow, Verdicts.of(records, shadow))


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


def make_backend(settings: ScorerSettings) -> ScoringBackend:
    if settings.backend == "inprocess":
        if settings.model_dir is None:
            raise SettingsError("--model-dir (HEADBITS_MODEL_DIR) is required with inprocess")
        from headbits.common.model_repository import resolve_version_dir
        from headbits.scorer.inprocess import SavedModelBackend

        return SavedModelBackend(resolve_version_dir(settings.model_dir))
    if settings.backend == "tfserving":
        from headbits.scorer.tfserving import TFServingBackend, TLSFiles

        tls = None
        if settings.serving_tls:
            tls = TLSFiles(settings.serving_ca_file, settings.serving_cert_file,
                           settings.serving_key_file, settings.serving_server_name)
        elif settings.serving_cert_file or settings.serving_ca_file:
            raise SettingsError("--serving-ca-file/--serving-cert-file need --serving-tls true "
                                "(HEADBITS_SERVING_TLS)")
        return TFServingBackend(settings.serving_target, version_label=settings.version_label,
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
    try:
        shadow = make_shadow(settings, backend)
        writes_scores = settings.write_scores or shadow is not None
        stage = ScorerStage(backend, settings.alerts_topic,
                            settings.scores_topic if writes_scores else None, shadow)
        return run_stage(stage, settings, settings.features_topic)
    finally:
        if shadow is not None:
            shadow.close()
        backend.close()
