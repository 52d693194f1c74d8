"""The scorer's emit-time step: the alerts a batch made -> the alerts a SOC gets, plus counts.

One narrow step between scoring and producing, in this order:
1. enrich: Community ID v1 of the 5-tuple, the evidence in words, severity from the table;
2. learning: alerts of a sensor in learning mode get `learning: true` (`learning`);
3. suppression: an alert matching a rule in force (`rules`: the rules topic, benign feedback,
   the chart's static rules) is not written; it is counted per rule (Prometheus) and, when the
   scores topic is written, its Score record names the rule in `suppressed_by`;
4. aggregation: same-pattern alerts within a window become one (`aggregation`);
5. forms: with `alerts_json_topic`, each alert also as ECS, OCSF or plain JSON.
The rules are read by following the rules and feedback topics (`TopicFollower`) between
batches, so a rule added or removed applies from the next batch on, on every replica.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client import Counter, Gauge

from headbits.common.alert_forms import FORMS
from headbits.common.avro import DecodeError, ValueCodec, open_registry
from headbits.common.kafka import (
    AlertsJsonTopic,
    FeedbackTopic,
    KafkaConnection,
    RulesTopic,
    TopicCreation,
    ensure_topics,
)
from headbits.common.kafka.follower import TopicFollower, ensure_compacted_topics
from headbits.common.logs import fields
from headbits.common.service import JSON_VALUES, Output, Runtime
from headbits.common.settings import setting
from headbits.scorer.aggregation import AlertWindows, state_key
from headbits.scorer.community_id import community_id
from headbits.scorer.evidence import (
    DEFAULT_SEVERITY_TABLE,
    evidence,
    parse_severity_table,
    severity,
)
from headbits.scorer.learning import LearningMode
from headbits.scorer.rules import InvalidRule, Rule, RuleSet, feedback_rule


@dataclass(frozen=True)
class EmitSettings(RulesTopic, FeedbackTopic, AlertsJsonTopic):
    """The scorer's settings of what happens to an alert between the model and the topic."""

    follow_rules: bool = setting(
        True, "follow the rules and feedback topics and suppress the alerts they match")
    rules_file: Path | None = setting(
        None, "YAML list of static suppression rules (the chart's `scorer.rules`), applied "
              "beside the rules topic's")
    severity_table: str = setting(
        DEFAULT_SEVERITY_TABLE, "protocol=low|medium|high|critical,...: severity by predicted "
        "protocol (`novel`: a protocol the model never learned, `anomalous`: unusual bytes of "
        "a known one, `*`: the rest)")
    alerts_json_format: str = setting("ecs", "form of the JSON alerts topic: ecs, ocsf or json")
    aggregate_seconds: float = setting(
        0.0, "collapse alerts of one (sensor, src, dst, port, reason, predicted protocol) "
             "within this many seconds into one alert with a count (0: every alert alone)")
    aggregate_count: int = setting(
        0, "emit an aggregated alert as soon as it counts this many connections (0: at the "
           "window's end only)")
    aggregate_max_open: int = setting(10000, "most open aggregation windows kept in memory")
    aggregate_keep_uids: int = setting(10, "uids an aggregated alert lists")
    alert_windows_topic: str = setting(
        "headbits.alert-windows.v1", "compacted topic of open aggregation windows (restarts)")
    scorer_id: str = setting(
        "", "this replica's name for its aggregation windows (default: the host name)")
    learning_hours: float = setting(
        0.0, "a new sensor's alerts are tagged learning for this many hours (0: no time limit)")
    learning_rows: int = setting(
        0, "... or until this many of its connections were scored (0: no row limit; both 0: "
           "no learning mode)")


@dataclass
class Emitted:
    """The alerts to write, and the other outputs the step made (rules, windows, JSON forms)."""

    alerts: list[dict]
    outputs: list[Output] = field(default_factory=list)
    suppressed: int = 0


class EmitMetrics:
    def __init__(self, runtime: Runtime) -> None:
        common = {"registry": runtime.metrics.registry, "namespace": "headbits"}
        self.suppressed = Counter("alerts_suppressed", "alerts not written because a rule "
                                  "matched, by rule id", ["rule"], **common)
        self.rules = Gauge("rules_in_force", "suppression rules this replica applies", **common)
        self.invalid = Counter("rules_invalid", "rule or feedback records that could not be "
                               "applied (logged with the reason)", ["topic"], **common)
        self.learning_left = Gauge("learning_left_ratio", "share of a sensor's learning mode "
                                   "left (0: learning done)", ["sensor"], **common)
        self.windows = Gauge("alert_windows_open", "open aggregation windows", **common)
        self.early = Counter("alert_windows_emitted_early", "windows emitted before their end "
                             "because aggregate_max_open windows were open", **common)


class AlertEmitter:
    """Alerts in, alerts out (+ outputs and counts). Without `attach` (offline, unit tests) it
    enriches, tags, aggregates and applies `rules` given to it, and follows no topic."""

    def __init__(self, settings: EmitSettings | None = None, rules: RuleSet | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or EmitSettings(follow_rules=False)
        self.rules = rules or RuleSet()
        self._clock = clock
        self._table = parse_severity_table(self.settings.severity_table)
        if self.settings.alerts_json_format not in FORMS:
            raise ValueError(f"alerts_json_format {self.settings.alerts_json_format!r} is not "
                             f"one of {sorted(FORMS)}")
        self.learning = LearningMode(self.settings.learning_hours, self.settings.learning_rows,
                                     clock)
        self.windows = AlertWindows(self.settings.scorer_id or socket.gethostname(),
                                    self.settings.aggregate_seconds,
                                    self.settings.aggregate_count,
                                    self.settings.aggregate_max_open,
                                    self.settings.aggregate_keep_uids, clock)
        if self.settings.rules_file is not None:
            for rule in load_rules_file(self.settings.rules_file):
                self.rules.put(rule)
        self._follower: TopicFollower | None = None
        self._codecs: dict[str, ValueCodec] = {}
        self._metrics: EmitMetrics | None = None
        self._log = logging.getLogger("headbits.scorer")

    def output_schemas(self) -> dict[str, str]:
        schemas = {}
        if self.learning.enabled:
            schemas[self.settings.rules_topic] = "rule"
        if self.windows.enabled:
            schemas[self.settings.alert_windows_topic] = "alert_window"
        if self.settings.alerts_json_topic:
            schemas[self.settings.alerts_json_topic] = JSON_VALUES
        return schemas

    def attach(self, runtime: Runtime) -> None:
        """Metrics; the compacted topics; the rules, feedback and own windows read to the end."""
        self._metrics = EmitMetrics(runtime)
        self._log = runtime.log
        settings: KafkaConnection = runtime.settings
        follow = []
        if self.settings.follow_rules:
            follow += [self.settings.rules_topic, self.settings.feedback_topic]
        if self.windows.enabled:
            follow.append(self.settings.alert_windows_topic)
        if not follow:
            return
        creation = settings if isinstance(settings, TopicCreation) else TopicCreation()
        if creation.create_topics:
            compacted = [t for t in follow if t != self.settings.feedback_topic]
            ensure_compacted_topics(settings, compacted, creation.topic_partitions,
                                    creation.topic_replication_factor)
            if self.settings.follow_rules:
                ensure_topics(settings, [self.settings.feedback_topic])
        self._codecs = rule_codecs(self.settings, settings)
        self._follower = TopicFollower(settings, follow)
        self._apply(self._follower.catch_up(), restoring=True)
        runtime.log.info("rules read", extra=fields(
            rules=len(self.rules), open_windows=len(self.windows),
            learning_sensors=len(self.rules.learning_started)))

    def _apply(self, messages: list, restoring: bool = False) -> None:
        windows = []
        for message in messages:
            topic = message.topic()
            try:
                if topic == self.settings.alert_windows_topic:
                    if message.value() is None:
                        continue
                    record = self._codecs[topic].decode(message.value(), message.headers())
                    if restoring or record["scorer_id"] != self.windows.scorer_id:
                        windows.append(record)
                else:
                    apply_rule_message(self.rules, self.settings, self._codecs, message)
            except (DecodeError, InvalidRule, KeyError, TypeError) as error:
                if self._metrics is not None:
                    self._metrics.invalid.labels(topic).inc()
                self._log.warning("rule record not applied", extra=fields(
                    topic=topic, partition=message.partition(), offset=message.offset(),
                    reason=str(error)))
        self.windows.restore(windows, mine=restoring)

    def emit(self, sensors: list[str], alerts: list[dict], scores: list[dict]) -> Emitted:
        """The alerts to write from a batch's alerts; `sensors`: the sensor of every scored row
        (learning counts rows); `scores` (the batch's Score records, may be empty) are marked
        `suppressed_by` in place."""
        if self._follower is not None:
            self._apply(self._follower.poll())
        now = self._clock()
        outputs: list[Output] = []
        started = self.learning.observe(sensors, self.rules)
        if started:
            outputs.append(Output(self.settings.rules_topic, [r.to_record() for r in started],
                                  [r.id for r in started]))
        kept, suppressed = [], {}
        for alert in alerts:
            enrich(alert, self._table)
            alert["learning"] = self.learning.learning(alert["sensor"], self.rules)
            rule = self.rules.match(alert, now)
            if rule is None:
                kept.append(alert)
            else:
                suppressed[(alert["uid"], alert["model_version"])] = rule.id
                if self._metrics is not None:
                    self._metrics.suppressed.labels(rule.id).inc()
        if suppressed:  # otherwise the schema's default ("") is written
            for score in scores:
                score["suppressed_by"] = suppressed.get((score["uid"], score["model_version"]),
                                                        "")
        aggregated = self.windows.add(kept)
        if aggregated.states:
            outputs.append(Output(self.settings.alert_windows_topic, aggregated.states,
                                  [state_key(state) for state in aggregated.states]))
        if self.settings.alerts_json_topic and aggregated.alerts:
            render = FORMS[self.settings.alerts_json_format]
            outputs.append(Output(self.settings.alerts_json_topic,
                                  [render(alert) for alert in aggregated.alerts],
                                  [alert["uid"] for alert in aggregated.alerts]))
        if self._metrics is not None:
            self._metrics.rules.set(len(self.rules))
            self._metrics.windows.set(len(self.windows))
            self._metrics.early.inc(aggregated.early)
            for sensor, left in self.learning.progress().items():
                self._metrics.learning_left.labels(sensor).set(left)
        return Emitted(aggregated.alerts, outputs, len(suppressed))

    def close(self) -> None:
        if self._follower is not None:
            self._follower.close()


def rule_codecs(settings: EmitSettings, connection: KafkaConnection) -> dict[str, ValueCodec]:
    registry = open_registry(connection)
    return {settings.rules_topic: ValueCodec("rule", settings.rules_topic, registry),
            settings.feedback_topic: ValueCodec("feedback", settings.feedback_topic, registry),
            settings.alert_windows_topic: ValueCodec(
                "alert_window", settings.alert_windows_topic, registry)}


def apply_rule_message(rules: RuleSet, settings: RulesTopic, codecs: dict[str, ValueCodec],
                       message) -> None:
    """One record of the rules topic (a rule, a learning start, or a null value removing the
    key) or of the feedback topic (benign: its rule; another verdict: that rule lifted) applied
    to `rules`; DecodeError or InvalidRule when it cannot be."""
    topic = message.topic()
    if message.value() is None:
        if topic == settings.rules_topic:
            rules.remove((message.key() or b"").decode(errors="replace"))
        return
    record = codecs[topic].decode(message.value(), message.headers())
    if topic == settings.rules_topic:
        rules.put(Rule.from_record(record))
        return
    rule = feedback_rule(record)
    if rule is None:
        rules.remove(f"feedback/{record['uid']}")
    else:
        rules.put(rule)


def enrich(alert: dict, table: dict[str, str]) -> dict:
    """Community ID, evidence and severity of one alert (in place; returned for chaining)."""
    alert["community_id"] = community_id(alert["orig_h"], alert["orig_p"], alert["resp_h"],
                                         alert["resp_p"], alert["transport"])
    alert["evidence"] = evidence(alert)
    alert["severity"] = severity(alert, table)
    return alert


def load_rules_file(path: Path) -> list[Rule]:
    """Static rules from YAML (a list of rule fields; `id` defaults to chart/<position>)."""
    entries = yaml.safe_load(Path(path).read_text()) or []
    if not isinstance(entries, list):
        raise InvalidRule(f"{path}: a list of rules is expected")
    rules = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidRule(f"{path}: rule {position} is not a mapping")
        rules.append(Rule.from_record({"id": f"chart/{position}", "origin": "chart", **entry}))
    return rules
