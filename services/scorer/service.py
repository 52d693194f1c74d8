"""Run the scorer service: feature records from Kafka -> model scores -> alerts to Kafka.

Consumes headbits.features.v1 in batches, scores them through a scoring backend (the in-process
SavedModel, or TF Serving over gRPC), and writes every alert (reconstruction error over the
threshold, or predicted protocol != expected protocol) to headbits.alerts.v1, keyed by uid; with
--write-scores, every score to headbits.scores.v1 as well. Records that cannot be scored (wrong
N, undecodable) go to headbits.deadletter.v1. Offsets are stored only after the outputs are
acknowledged; while the backend is unavailable the same batch is retried and nothing is stored.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from headbits.common.service import Output, ServiceSettings, Stage, Transformed, run_stage
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
from headbits.scorer.backend import BackendUnavailable, ScoringBackend


@dataclass(frozen=True)
class ScorerSettings(ServiceSettings):
    backend: str = setting("inprocess", "inprocess (SavedModel in this process) or tfserving")
    model_dir: Path | None = setting(
        None, "inprocess: a model base dir (latest <base>/headbits/<version>) or a version dir"
    )
    serving_target: str = setting("127.0.0.1:8500", "tfserving: gRPC host:port")
    version_label: str = setting("stable", "tfserving: the version label to score with")
    write_scores: bool = setting(False, "also write every score to the scores topic")


class ScorerStage(Stage):
    name = "scorer"
    input_schema = "features"
    retryable_errors = (BackendUnavailable,)

    def __init__(self, backend: ScoringBackend, alerts_topic: str, scores_topic: str | None):
        self._backend = backend
        self._alerts_topic = alerts_topic
        self._scores_topic = scores_topic

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
        if self._scores_topic:
            everything = score_dicts(scorable, scores, verdicts)
            outputs.append(Output(self._scores_topic, everything, [s["uid"] for s in everything]))
        return Transformed(outputs, rejected)


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


def configure(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, ScorerSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(ScorerSettings, args)
    backend = make_backend(settings)
    try:
        stage = ScorerStage(backend, settings.alerts_topic,
                            settings.scores_topic if settings.write_scores else None)
        return run_stage(stage, settings, settings.features_topic)
    finally:
        backend.close()
