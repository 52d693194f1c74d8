"""Suppression rules: `headbits rules add|list|remove|reset-learning`.

Rules live in the compacted topic headbits.rules.v1 (key = rule id); every scorer replica
follows it and applies a change from its next batch on, without a restart. A rule names any of:
sensor, source and destination CIDR, responder port, transport, expected and predicted protocol,
reason; unset fields match anything. It may expire, and it always says who added it and why.

  headbits rules add --dst 10.0.5.0/24 --port 5228 --predicted tls --expires-hours 72 \\
      --comment "Google services on 5228 (nDPI #917)"
  headbits rules list                      (also the rules benign feedback made, and learning)
  headbits rules remove RULE_ID
  headbits rules reset-learning SENSOR     (the sensor's alerts are tagged learning again)
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
import uuid
from dataclasses import dataclass

from headbits.common.avro import DecodeError, ValueCodec, open_registry
from headbits.common.kafka import FeedbackTopic, KafkaConnection, Producer, RulesTopic
from headbits.common.kafka.follower import TopicFollower, ensure_compacted_topics
from headbits.common.settings import add_settings_arguments, settings_from_args
from headbits.scorer.learning import start_record
from headbits.scorer.rules import REASONS, InvalidRule, Rule, RuleSet


@dataclass(frozen=True)
class RulesSettings(KafkaConnection, RulesTopic, FeedbackTopic):
    """Which cluster, and the rules and feedback topics."""


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add (or replace, with the same --id) a rule")
    add.add_argument("--id", default="", help="rule id (default: a new one)")
    add.add_argument("--sensor", default="")
    add.add_argument("--src", default="", help="originator address or CIDR")
    add.add_argument("--dst", default="", help="responder address or CIDR")
    add.add_argument("--port", type=int, default=-1, help="responder port")
    add.add_argument("--transport", default="", choices=("", "tcp", "udp"))
    add.add_argument("--expected", default="", help="expected protocol")
    add.add_argument("--predicted", default="", help="predicted protocol")
    add.add_argument("--reason", default="", choices=("", *REASONS))
    add.add_argument("--expires-hours", type=float, default=0.0, help="0: never expires")
    add.add_argument("--comment", required=True, help="why (kept with the rule)")
    add.add_argument("--author", default="", help="who (default: the login name)")
    actions.add_parser("list", help="the rules in force, with who added them, when and why")
    remove = actions.add_parser("remove", help="remove a rule by id")
    remove.add_argument("rule_id")
    reset = actions.add_parser("reset-learning", help="start a sensor's learning mode again")
    reset.add_argument("sensor")
    reset.add_argument("--comment", default="learning reset")
    reset.add_argument("--author", default="")
    for action in (add, actions.choices["list"], remove, reset):
        add_settings_arguments(action, RulesSettings)


def author(args: argparse.Namespace) -> str:
    return args.author or getpass.getuser()


def write_rule(settings: RulesSettings, rule_id: str, record: dict | None) -> None:
    """Write one record (None: a tombstone, removing `rule_id`) and wait for the ack."""
    ensure_compacted_topics(settings, [settings.rules_topic])
    producer = Producer(settings)
    if record is None:
        producer.produce(settings.rules_topic, None, rule_id)
    else:
        codec = ValueCodec("rule", settings.rules_topic, open_registry(settings))
        producer.produce(settings.rules_topic, codec.encode(record), rule_id, codec.headers)
    producer.flush()


def read_rules(settings: RulesSettings) -> RuleSet:
    """The rules as a scorer would apply them now (rules topic + benign feedback)."""
    from headbits.scorer.emit import EmitSettings, apply_rule_message, rule_codecs

    emit = EmitSettings(rules_topic=settings.rules_topic, feedback_topic=settings.feedback_topic)
    codecs = rule_codecs(emit, settings)
    rules = RuleSet()
    topics = [settings.rules_topic, settings.feedback_topic]
    follower = TopicFollower(settings, topics)
    try:
        for message in follower.catch_up():
            try:
                apply_rule_message(rules, emit, codecs, message)
            except (DecodeError, InvalidRule) as error:
                print(f"# {message.topic()}/{message.partition()}/{message.offset()}: {error}",
                      file=sys.stderr)
    finally:
        follower.close()
    return rules


def describe(rule: Rule, now: float) -> str:
    fields = {"sensor": rule.sensor, "src": rule.src_cidr, "dst": rule.dst_cidr,
              "port": rule.resp_p if rule.resp_p >= 0 else "", "transport": rule.transport,
              "expected": rule.expected_protocol, "predicted": rule.predicted_protocol,
              "reason": rule.reason}
    match = " ".join(f"{k}={v}" for k, v in fields.items() if v != "") or "(everything)"
    if rule.expires:
        left = "expired" if now >= rule.expires else f"expires {iso(rule.expires)}"
    else:
        left = "never expires"
    return (f"{rule.id}  {match}  {left}  by {rule.author or '?'} at {iso(rule.created)} "
            f"({rule.origin}): {rule.comment}")


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if seconds else "-"


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(RulesSettings, args)
    now = time.time()
    if args.action == "add":
        try:
            rule = Rule(
                id=args.id or f"rule-{uuid.uuid4().hex[:8]}", sensor=args.sensor,
                src_cidr=args.src, dst_cidr=args.dst, resp_p=args.port,
                transport=args.transport, expected_protocol=args.expected,
                predicted_protocol=args.predicted, reason=args.reason,
                expires=now + args.expires_hours * 3600 if args.expires_hours else 0.0,
                created=now, author=author(args), comment=args.comment, origin="cli")
        except InvalidRule as error:
            print(f"headbits rules add: {error}", file=sys.stderr)
            return 2
        write_rule(settings, rule.id, rule.to_record())
        print(rule.id)
        return 0
    if args.action == "remove":
        write_rule(settings, args.rule_id, None)
        return 0
    if args.action == "reset-learning":
        record = start_record(args.sensor, now, author(args), args.comment)
        write_rule(settings, record.id, record.to_record())
        return 0
    rules = read_rules(settings)
    for rule in rules.rules():
        print(describe(rule, now))
    for sensor, started in sorted(rules.learning_started.items()):
        print(f"learning/{sensor}  learning since {iso(started)}")
    return 0
