"""Run the scorer service: feature records from Kafka -> model scores -> alerts to Kafka.

Consumes headbits.features.v1 in batches, scores them through a scoring backend (the in-process
SavedModel, or TF Serving over gRPC), and writes every alert (reconstruction error over the
threshold, or predicted protocol != expected protocol) to headbits.alerts.v1, keyed by uid; with
--write-scores, every score to headbits.scores.v1 as well. With --shadow-label canary (TF Serving
backend) the canary version scores the same rows: its scores go to the scores topic beside the
primary's, never to the alerts, and Prometheus counts where the two disagree. Records that cannot
be scored (wrong N, undecodable) go to headbits.deadletter.v1. Offsets are stored only after the
outputs are acknowledged; while the backend is unavailable the same batch is retried and nothing
is stored.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

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
from headbits.scorer.alerting import (
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
from headbits.scorer.zeek_notices import ZeekAlertPublisher


@dataclass(frozen=True)
class ScorerSettings(ServiceSettings):
    backend: str = setting("inprocess", "inprocess (SavedModel in this process) or tfserving")
    model_dir: Path | None = setting(
        None, "inprocess: a model base dir (latest <base>/headbits/<version>) or a version dir"
    )
    serving_target: str = setting("127.0.0.1:8500", "tfserving: gRPC host:port")
    version_label: str = setting("stable", "tfserving: the version label to score with")
    shadow_label: str | None = setting(
        None, "tfserving: also score with this label (e.g. canary); its scores go to the scores "
              "topic next to the primary's, and metrics count where the two disagree")
    write_scores: bool = setting(False, "also write every score to the scores topic")
    zeek_alerts_url: str | None = setting(
        None, "also publish alerts to this Zeek WebSocket server (ws://sensor:27759/v1/messages/"
              "json) as HeadBits::alert events, which the package logs as notices")


class ScorerStage(Stage):
    name = "scorer"
    input_schema = "features"
    retryable_errors = (BackendUnavailable,)

    def __init__(
        self, backend: ScoringBackend, alerts_topic: str, scores_topic: str | None,
        shadow: ScoringBackend | None = None, notices: ZeekAlertPublisher | None = None,
    ):
        if shadow is not None and scores_topic is None:
            raise ValueError("shadow scoring writes to the scores topic: give scores_topic")
        self._backend = backend
        self._alerts_topic = alerts_topic
        self._scores_topic = scores_topic
        self._shadow = shadow
        self._notices = notices
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
        rejected, scorable = [], []
        for index in last_per_uid(records):
            problem = check_features(records[index], model_n)
            if problem is None:
                scorable.append(records[index])
            else:
                rejected.append((index, problem))
        if not scorable:
            return Transformed([], rejected)
        batch = head_batch(scorable, model_n)
        scores = self._backend.score(batch)
        verdicts = Verdicts.of(scorable, scores)
        alerts = alert_records(scorable, batch, scores, verdicts)
        outputs = [Output(self._alerts_topic, alerts, [a["uid"] for a in alerts])]
        if self._notices is not None:
            self._notices.publish(alerts)
        if self._scores_topic:
            everything = score_dicts(scorable, scores, verdicts)
            if self._shadow is not None:
                everything += self._shadow_scores(scorable, scores)
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
        from headbits.scorer.inprocess import SavedModelBackend, resolve_version_dir

        return SavedModelBackend(resolve_version_dir(settings.model_dir))
    if settings.backend == "tfserving":
        from headbits.scorer.tfserving import TFServingBackend

        return TFServingBackend(settings.serving_target, version_label=settings.version_label)
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
                            settings.scores_topic if writes_scores else None, shadow, notices)
        return run_stage(stage, settings, settings.features_topic)
    finally:
        if notices is not None:
            notices.close()
        if shadow is not None:
            shadow.close()
        backend.close()
