"""The SOC loop against a real Kafka broker, with the services as processes and the CLI as an
analyst runs it: a rule added while the scorer runs silences the next matching alerts and its
removal brings them back; alert -> `alerts mark benign` -> the pattern is suppressed -> the
trainer's next window counts the feedback rows; aggregation windows survive a restart; the
JSON alerts topic carries the ECS form."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
import sys
import time
import uuid

import pytest

from headbits.common.kafka import Consumer
from headbits.common.records import PayloadHead
from headbits.devtools.harness import ServiceProcess, Topics, read_topic
from tests.source_helpers import produce_heads
from tests.test_kafka_pipeline import (  # noqa: F401 - module fixtures
    _scrape,
    capture_heads,
    model_version_dir,
    offline_scores,
    synthetic_heads,
)

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def alerting_head(model_version_dir) -> tuple[PayloadHead, str]:  # noqa: F811
    """A head the tiny model alerts on, and why (scoring is deterministic per head)."""
    heads = synthetic_heads(200, seed=11)
    scores = offline_scores(model_version_dir, heads)
    for head in heads:
        if scores[head.uid]["reason"]:
            return head, scores[head.uid]["reason"]
    pytest.fail("the tiny model alerts on none of 200 random heads: nothing to suppress")


def copies(head: PayloadHead, tag: str, count: int, **changes) -> list[PayloadHead]:
    return [dataclasses.replace(head, uid=f"{tag}{i:03d}-{uuid.uuid4().hex[:6]}",
                                ts=head.ts + i, **changes) for i in range(count)]


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "headbits.cli", *args], env=env, check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Pipeline:
    """Featurizer + scorer on fresh topics (rules topic included), and readers of the outputs."""

    def __init__(self, kafka_bootstrap: str, version_dir, log_dir, *scorer_args: str) -> None:
        import os

        self.topics = Topics(kafka_bootstrap)
        tag = self.topics["heads"].split(".")[0]
        self.env = {**os.environ, **self.topics.env,
                    "HEADBITS_RULES_TOPIC": f"{tag}.rules",
                    "HEADBITS_ALERT_WINDOWS_TOPIC": f"{tag}.alert-windows",
                    "HEADBITS_ALERTS_JSON_TOPIC": f"{tag}.alerts-json"}
        self.log_dir = log_dir
        self.scorer_args = ("--model-dir", str(version_dir), "--write-scores", "true",
                            *scorer_args)
        self.featurizer = ServiceProcess("featurizer", self.env, log_dir)
        self.scorer = self.start_scorer()
        self.featurizer.wait_started()

    def start_scorer(self) -> ServiceProcess:
        scorer = ServiceProcess("scorer", self.env, self.log_dir, *self.scorer_args)
        self.metrics_port = scorer.wait_started()["metrics_port"]
        return scorer

    def send(self, heads: list[PayloadHead]) -> dict[str, dict]:
        """Produce heads and wait until each one's score is written; uid -> score."""
        produce_heads(self.topics.settings, self.topics["heads"], heads)
        wanted = {h.uid for h in heads}
        scores = read_topic(self.topics.settings, self.topics["scores"], "score",
                            lambda got: {s["uid"] for s in got} >= wanted)
        return {s["uid"]: s for s in scores if s["uid"] in wanted}

    def alerts(self) -> list[dict]:
        """Every alert written so far (read after the scores of the same batches)."""
        return read_topic(self.topics.settings, self.topics["alerts"], "alert",
                          lambda got: False, timeout=3)

    def stop(self) -> None:
        assert self.featurizer.stop() == 0
        assert self.scorer.stop() == 0


def alerted(pipeline: Pipeline, heads: list[PayloadHead]) -> set[str]:
    uids = {h.uid for h in heads}
    return {a["uid"] for a in pipeline.alerts()} & uids


def test_a_rule_silences_matching_alerts_at_once_and_its_removal_brings_them_back(
    kafka_bootstrap, model_version_dir, alerting_head, tmp_path,  # noqa: F811
):
    head, _ = alerting_head
    pipeline = Pipeline(kafka_bootstrap, model_version_dir, tmp_path)
    try:
        before = copies(head, "before", 3)
        assert all(s["alert"] and not s["suppressed_by"] for s in pipeline.send(before).values())
        assert alerted(pipeline, before) == {h.uid for h in before}

        rule_id = cli(pipeline.env, "rules", "add", "--dst", f"{head.resp_h}/32", "--port",
                      str(head.resp_p), "--transport", head.transport, "--comment",
                      "known backup service", "--author", "ana").strip()
        listed = cli(pipeline.env, "rules", "list")
        assert rule_id in listed and "by ana" in listed and "known backup service" in listed

        # The scorer follows the rules topic: the rule applies without a restart, from the
        # batch after it reached the replica (a fraction of a second).
        deadline = time.monotonic() + 30
        while True:
            probe = copies(head, "probe", 1)
            if pipeline.send(probe)[probe[0].uid]["suppressed_by"] == rule_id:
                break
            assert time.monotonic() < deadline, "the rule never applied"
        during = copies(head, "during", 5)
        scores = pipeline.send(during)
        assert {s["suppressed_by"] for s in scores.values()} == {rule_id}
        assert all(s["alert"] for s in scores.values()), "suppressed, not judged normal"
        other = copies(head, "other", 2, resp_p=head.resp_p + 1)
        assert not any(s["suppressed_by"] for s in pipeline.send(other).values())
        assert alerted(pipeline, during) == set()
        assert alerted(pipeline, other) == {h.uid for h in other}
        metrics = _scrape(pipeline.metrics_port)
        suppressed = re.search(
            rf'headbits_alerts_suppressed_total{{rule="{rule_id}"}} (\S+)', metrics)
        assert suppressed and float(suppressed.group(1)) >= len(during) + 1

        cli(pipeline.env, "rules", "remove", rule_id)
        deadline = time.monotonic() + 30
        while True:
            probe = copies(head, "back", 1)
            if not pipeline.send(probe)[probe[0].uid]["suppressed_by"]:
                break
            assert time.monotonic() < deadline, "the removed rule still applies"
        after = copies(head, "after", 3)
        assert not any(s["suppressed_by"] for s in pipeline.send(after).values())
        assert alerted(pipeline, after) == {h.uid for h in after}
        assert rule_id not in cli(pipeline.env, "rules", "list")
    finally:
        pipeline.stop()


def test_benign_feedback_suppresses_the_pattern_and_the_trainer_counts_it(
    kafka_bootstrap, model_version_dir, alerting_head, tmp_path,  # noqa: F811
):
    from headbits.trainer.service import TrainerSettings, read_window

    head, _ = alerting_head
    pipeline = Pipeline(kafka_bootstrap, model_version_dir, tmp_path)
    try:
        (first,) = copies(head, "marked", 1)
        pipeline.send([first])
        assert alerted(pipeline, [first]) == {first.uid}

        tail = cli(pipeline.env, "alerts", "tail", "--from-beginning", "--format", "ecs",
                   "--count", "1", "--idle-seconds", "10")
        document = json.loads(tail.splitlines()[0])
        assert document["zeek"]["session_id"] == first.uid
        assert document["network"]["community_id"].startswith("1:")

        out = cli(pipeline.env, "alerts", "mark", first.uid, "benign", "--comment",
                  "vendor's update check", "--author", "ana", "--protocol", "tls")
        assert f"suppressed as rule feedback/{first.uid}" in out
        listed = cli(pipeline.env, "rules", "list")
        assert f"feedback/{first.uid}" in listed and "by ana" in listed

        deadline = time.monotonic() + 30
        while True:
            probe = copies(head, "same-pattern", 1, orig_h="10.77.0.9")
            if pipeline.send(probe)[probe[0].uid]["suppressed_by"] == f"feedback/{first.uid}":
                break
            assert time.monotonic() < deadline, "benign feedback never suppressed the pattern"
        assert alerted(pipeline, probe) == set()

        feedback = read_topic(pipeline.topics.settings, pipeline.topics["feedback"], "feedback",
                              lambda got: len(got) >= 1)
        assert [(f["uid"], f["verdict"], f["author"], f["comment"]) for f in feedback] == [
            (first.uid, "benign", "ana", "vendor's update check")]
        assert feedback[0]["ts"] > time.time() - 300

        settings = TrainerSettings(
            bootstrap_servers=kafka_bootstrap, features_topic=pipeline.topics["features"],
            feedback_topic=pipeline.topics["feedback"], n=16, max_rows=100000)
        window = read_window(settings, logging.getLogger("test"), time.time())
        assert window.counts.feedback_benign == 1
        assert window.describe()["feedback_benign"] == 1
        (taught,) = [r for r in window.records if r["uid"] == first.uid]
        assert (taught["expected_protocol"], taught["expected_source"]) == ("tls", "zeek")
    finally:
        pipeline.stop()


def test_an_aggregation_window_survives_a_scorer_restart_and_the_json_topic_has_ecs(
    kafka_bootstrap, model_version_dir, alerting_head, tmp_path,  # noqa: F811
):
    head, _ = alerting_head
    # The window outlasts the restart (TensorFlow loads in seconds); the count ends it.
    pipeline = Pipeline(kafka_bootstrap, model_version_dir, tmp_path, "--aggregate-seconds",
                        "300", "--aggregate-count", "5", "--alerts-json-format", "ecs")
    try:
        first = copies(head, "agg-a", 3)
        pipeline.send(first)
        windows = read_topic(pipeline.topics.settings, pipeline.env["HEADBITS_ALERT_WINDOWS_TOPIC"],
                             "alert_window", lambda got: any(w["open"] for w in got))
        assert windows and pipeline.alerts() == []
        assert pipeline.scorer.stop() == 0
        pipeline.scorer = pipeline.start_scorer()
        second = copies(head, "agg-b", 2)
        pipeline.send(second)
        alerts = [a for a in pipeline.alerts() if a["uid"] in {h.uid for h in first}]
        assert len(alerts) == 1, alerts
        (aggregate,) = alerts
        assert aggregate["count"] == 5
        assert sorted(aggregate["uids"]) == sorted(h.uid for h in first + second)
        times = [h.ts for h in first + second]
        assert (aggregate["first_seen"], aggregate["last_seen"]) == (min(times), max(times))

        consumer = Consumer(pipeline.topics.settings, f"json-{uuid.uuid4().hex}",
                            [pipeline.env["HEADBITS_ALERTS_JSON_TOPIC"]],
                            **{"enable.auto.commit": False})
        documents = []
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline and not documents:
                documents += [json.loads(m.value()) for m in consumer.consume(100, 0.5)]
        finally:
            consumer.close()
        (document,) = [d for d in documents if d["zeek"]["session_id"] == aggregate["uid"]]
        assert document["headbits"]["count"] == 5 and document["event"]["kind"] == "alert"
    finally:
        pipeline.stop()


def test_a_scorer_whose_rules_topic_is_missing_stops_and_names_it(
    kafka_bootstrap, model_version_dir,  # noqa: F811
):
    import os

    topics = Topics(kafka_bootstrap)
    missing = f"{topics['heads']}.rules-never-created"
    env = {**os.environ, **topics.env, "HEADBITS_CREATE_TOPICS": "false",
           "HEADBITS_METRICS_PORT": "-1", "HEADBITS_RULES_TOPIC": missing}
    done = subprocess.run([sys.executable, "-m", "headbits.cli", "scorer", "--model-dir",
                           str(model_version_dir)], env=env, check=False, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"topic {missing!r} does not exist" in done.stderr
    assert "Traceback" not in done.stderr
