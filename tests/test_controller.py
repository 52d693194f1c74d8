"""The rollout controller: decisions from the scores topic (real Kafka), labels moved for real.

The scores are written as the scorer writes them with a shadow label (both versions' Score
records for the same connections); the labels live in the model repository's config, which the
TF Serving stand-in serves, so a promotion is seen by a scorer's backend without a restart.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from headbits.common.avro import ValueCodec
from headbits.common.kafka import KafkaSettings, Producer, ensure_topics
from headbits.common.model_repository import read_state, state_path
from headbits.devtools.tfserving_standin import StandinServer, standin_settings
from headbits.scorer.tfserving import TFServingBackend
from headbits.trainer.controller import (
    ControllerSettings,
    ScoreFigures,
    control_once,
    decide_canary,
    decide_stable,
)
from headbits.trainer.rollout import Repository
from tests.serving_models import export_versions

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
HOUR = 3600.0


def scores(version: int, count: int, alerting: int, ts: float, start: int = 0) -> list[dict]:
    return [{
        "uid": f"C{i:08d}", "ts": ts + i / 1000, "score": 0.1, "threshold": 1.0,
        "orig_error": 0.1, "resp_error": 0.1, "model_name": "headbits",
        "model_version": version, "predicted_protocol": "http", "predicted_probability": 0.9,
        "expected_protocol": "http", "alert": i - start < alerting,
    } for i in range(start, start + count)]


def produce(settings: KafkaSettings, records: list[dict]) -> None:
    codec = ValueCodec("score", settings.scores_topic)
    producer = Producer(settings)
    producer.produce_many(settings.scores_topic, codec.encode_many(records),
                          [r["uid"] for r in records], codec.headers)
    producer.flush()


def backdate(config: Path, seconds: float) -> None:
    """Move every history entry `seconds` into the past (a soak that already happened)."""
    path = state_path(config)
    document = json.loads(path.read_text())
    for entry in document["history"]:
        when = datetime.fromisoformat(entry["time"]).timestamp() - seconds
        entry["time"] = datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
    path.write_text(json.dumps(document))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return export_versions(tmp_path_factory.mktemp("models"), versions=(1, 2))


@pytest.fixture
def settings(kafka_bootstrap, tmp_path, models) -> ControllerSettings:
    topic = f"t{time.time_ns()}.scores"
    made = ControllerSettings(
        bootstrap_servers=kafka_bootstrap, scores_topic=topic, models_dir=models,
        config_file=tmp_path / "models.config", settle_seconds=0.0, min_scored_rows=200,
        soak_minutes=30, watch_minutes=60,
    )
    ensure_topics(KafkaSettings(bootstrap_servers=kafka_bootstrap, scores_topic=topic), [topic])
    return made


def kafka(settings: ControllerSettings) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=settings.bootstrap_servers,
                         scores_topic=settings.scores_topic)


def test_a_good_canary_is_promoted_after_its_soak_and_the_scorer_follows(settings, models):
    repository = Repository(settings, out=io.StringIO())
    repository.promote(1, "stable")
    repository.promote(2, "canary")
    server = StandinServer(standin_settings(  # labels at start-up need this flag, as for real
        settings.config_file, allow_version_labels_for_unavailable_models=True,
        file_system_poll_wait_seconds=0.1, model_config_file_poll_wait_seconds=0.1)).start()
    scorer = TFServingBackend(server.target, retries=0)
    try:
        assert scorer.info().version == 1
        now = time.time()
        produce(kafka(settings), scores(1, 400, 8, now) + scores(2, 400, 9, now))
        (early,) = [d for d in control_once(replace(settings, server=server.target), now + 60)
                    if d.action != "none"]
        assert early.action == "wait", "not soaked yet: nothing moves"
        assert read_state(settings.config_file).labels == {"stable": 1, "canary": 2}

        backdate(settings.config_file, 2 * HOUR)
        produce(kafka(settings), scores(1, 400, 8, now - 1.5 * HOUR, start=1000)
                + scores(2, 400, 9, now - 1.5 * HOUR, start=1000))
        decisions = control_once(replace(settings, server=server.target), now + 60)
        assert [d.action for d in decisions] == ["promote"], decisions
        state = read_state(settings.config_file)
        assert state.labels["stable"] == 2
        entry = state.history[-1]
        assert entry["action"] == "promote" and entry["why"]["disagreement"] <= 0.02
        deadline = time.monotonic() + 20
        while scorer.score(labelled_batch()).model.version != 2:
            assert time.monotonic() < deadline, "the scorer never saw the promotion"
            time.sleep(0.1)
    finally:
        scorer.close()
        server.stop(grace=None)


def labelled_batch():
    from tests.serving_models import labelled_heads

    return labelled_heads(8, seed=3)[0]


def test_a_worse_canary_is_never_promoted(settings):
    repository = Repository(settings, out=io.StringIO())
    repository.promote(1, "stable")
    repository.promote(2, "canary")
    backdate(settings.config_file, 2 * HOUR)
    now = time.time()
    produce(kafka(settings), scores(1, 500, 5, now - HOUR) + scores(2, 500, 100, now - HOUR))
    decisions = control_once(settings, now)
    assert [d.action for d in decisions] == ["hold"]
    assert "alert rate" in decisions[0].why["reason"]
    state = read_state(settings.config_file)
    assert state.labels == {"stable": 1, "canary": 2}
    assert state.history[-1]["action"] == "hold"


def test_a_stable_whose_alert_rate_jumps_after_promotion_is_rolled_back(settings):
    repository = Repository(settings, out=io.StringIO())
    repository.promote(1, "stable")
    backdate(settings.config_file, 3 * HOUR)
    repository.promote(2, "stable")
    backdate(settings.config_file, 0.5 * HOUR)  # promoted half an hour ago
    promoted = datetime.fromisoformat(read_state(settings.config_file).history[-1]["time"])
    promoted_at = promoted.timestamp()
    produce(kafka(settings), scores(1, 500, 5, promoted_at - 0.5 * HOUR)
            + scores(2, 500, 60, promoted_at + 60, start=5000))
    decisions = control_once(settings, promoted_at + 0.5 * HOUR)
    assert decisions[0].action == "rollback", decisions
    state = read_state(settings.config_file)
    assert state.labels["stable"] == 1
    assert state.history[-1]["why"]["stable_alert_rate"] == pytest.approx(0.12)


def test_decisions_are_pure_functions_of_the_figures():
    from headbits.common.model_repository import RolloutState

    rules = ControllerSettings(min_scored_rows=10, soak_minutes=10)
    state = RolloutState(labels={"stable": 1, "canary": 2}, history=[
        {"time": datetime.fromtimestamp(0, UTC).isoformat(), "action": "promote",
         "label": "canary", "from": None, "to": 2}])
    agreeing = ScoreFigures()
    agreeing.add(scores(1, 100, 5, 10.0) + scores(2, 100, 5, 10.0))
    assert decide_canary(state, agreeing, 11 * 60, rules).action == "promote"
    assert decide_canary(state, agreeing, 5 * 60, rules).action == "wait"
    drifted = decide_canary(state, agreeing, 11 * 60, rules, drifted=["protocol/dns"])
    assert drifted.action == "hold" and "drifted" in drifted.why["reason"]

    # The same alert rate on other connections: 10 of 100 verdicts differ.
    elsewhere = scores(2, 100, 0, 10.0)
    for record in elsewhere[50:55]:
        record["alert"] = True
    disagreeing = ScoreFigures()
    disagreeing.add(scores(1, 100, 5, 10.0) + elsewhere)
    held = decide_canary(state, disagreeing, 11 * 60, rules)
    assert held.action == "hold" and "disagreement" in held.why["reason"]
    assert held.why["disagreement"] == pytest.approx(0.1)

    never_promoted = RolloutState(labels={"stable": 1})
    assert decide_stable(never_promoted, agreeing, agreeing, 0.0, rules).action == "none"
    assert decide_canary(never_promoted, agreeing, 0.0, rules).action == "none", "no canary"
