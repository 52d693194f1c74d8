"""Read alerts from Kafka and give verdicts on them: `headbits alerts tail|mark`.

`tail` prints alerts as they arrive, as `--format table` (one line for an analyst: severity,
uid, flow, the evidence in words, tail probability, model, head bytes), `json` (the record, bytes
as hex and printable), `ecs` (Elastic Common Schema) or `ocsf` (OCSF Detection Finding, class
2004): one JSON object per line to pipe into jq or a SIEM forwarder. `--from-beginning` reads the
whole retained topic; `--count N` stops after N alerts; `--idle-seconds S` stops once no alert
came for S seconds. It reads with its own consumer group and never commits.

`mark UID benign|malicious [--comment TEXT]` writes the verdict to the feedback topic with who
gave it and when. Benign: every scorer suppresses the flow's pattern (sensor, responder, port,
transport, expected and predicted protocol) for --suppress-days, and the trainer learns the
connection as normal traffic (as --protocol, default the predicted one). Malicious: the
connection is kept out of training. The alert is looked up in the last --since-hours of the
alerts topic.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
import uuid
from dataclasses import dataclass

import orjson

from headbits.common.alert_forms import FORMS, table
from headbits.common.avro import DecodeError, ValueCodec, open_registry
from headbits.common.kafka import (
    AlertsTopic,
    Consumer,
    FeedbackTopic,
    KafkaConnection,
    Producer,
    ensure_topics,
)
from headbits.common.settings import add_settings_arguments, settings_from_args
from headbits.common.topic_window import decoded_since


@dataclass(frozen=True)
class AlertsSettings(KafkaConnection, AlertsTopic, FeedbackTopic):
    """Only the Kafka settings: which cluster, the alerts and the feedback topic."""


def render(alert: dict, form: str) -> str:
    if form == "table":
        return table(alert)
    return orjson.dumps(FORMS[form](alert)).decode()


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    tail = actions.add_parser("tail", help="print alerts as they arrive")
    tail.add_argument("--format", choices=("table", *FORMS), default="table")
    tail.add_argument("--json", action="store_true", help="the same as --format json")
    tail.add_argument("--from-beginning", action="store_true", help="read the retained topic")
    tail.add_argument("--count", type=int, default=0, help="stop after this many alerts")
    tail.add_argument("--idle-seconds", type=float, default=0.0,
                      help="stop after this long without an alert (0: never)")
    mark = actions.add_parser("mark", help="give a verdict on an alert (feedback topic)")
    mark.add_argument("uid", help="the alert's Zeek uid")
    mark.add_argument("verdict", choices=("benign", "malicious"))
    mark.add_argument("--comment", default="", help="why (kept with the verdict)")
    mark.add_argument("--author", default="", help="who (default: the login name)")
    mark.add_argument("--protocol", default="",
                      help="benign: what the connection really is (default: the predicted one)")
    mark.add_argument("--suppress-days", type=float, default=7.0,
                      help="benign: how long the flow's pattern is suppressed (0: not at all)")
    mark.add_argument("--since-hours", type=float, default=24.0 * 7,
                      help="look the alert up in this much of the alerts topic")
    for action in (tail, mark):
        add_settings_arguments(action, AlertsSettings)


def find_alert(settings: AlertsSettings, uid: str, since_hours: float) -> dict | None:
    """The last alert of `uid` (its own or an aggregate listing it) in the recent topic."""
    found = None
    for batch in decoded_since(settings, settings.alerts_topic, "alert",
                               time.time() - since_hours * 3600):
        for alert in batch:
            if alert["uid"] == uid or uid in alert["uids"]:
                found = alert
    return found


def feedback_record(alert: dict, verdict: str, author: str, comment: str, protocol: str,
                    suppress_days: float, now: float, uid: str) -> dict:
    return {
        "uid": uid, "verdict": verdict, "ts": now, "author": author, "comment": comment,
        "sensor": alert["sensor"], "resp_h": alert["resp_h"], "resp_p": alert["resp_p"],
        "transport": alert["transport"], "expected_protocol": alert["expected_protocol"],
        "predicted_protocol": alert["predicted_protocol"],
        "protocol": protocol or alert["predicted_protocol"],
        "suppress_days": suppress_days if verdict == "benign" else 0.0,
    }


def mark(settings: AlertsSettings, args: argparse.Namespace) -> int:
    alert = find_alert(settings, args.uid, args.since_hours)
    if alert is None:
        print(f"headbits alerts mark: no alert of uid {args.uid} in the last "
              f"{args.since_hours:g} h of {settings.alerts_topic}", file=sys.stderr)
        return 1
    record = feedback_record(alert, args.verdict, args.author or getpass.getuser(),
                             args.comment, args.protocol, args.suppress_days, time.time(),
                             args.uid)
    ensure_topics(settings, [settings.feedback_topic])
    codec = ValueCodec("feedback", settings.feedback_topic, open_registry(settings))
    producer = Producer(settings)
    producer.produce(settings.feedback_topic, codec.encode(record), args.uid, codec.headers)
    producer.flush()
    rule = f", suppressed as rule feedback/{args.uid}" if record["suppress_days"] else ""
    print(f"{args.uid} marked {args.verdict} by {record['author']}{rule}")
    return 0


def tail(settings: AlertsSettings, args: argparse.Namespace) -> int:
    form = "json" if args.json else args.format
    registry = open_registry(settings)
    codec = ValueCodec("alert", settings.alerts_topic, registry)
    consumer = Consumer(
        settings, f"headbits-alerts-tail-{uuid.uuid4().hex[:8]}", [settings.alerts_topic],
        **{"auto.offset.reset": "earliest" if args.from_beginning else "latest",
           "enable.auto.commit": False},
    )
    shown = 0
    last_seen = time.monotonic()
    try:
        while not args.count or shown < args.count:
            messages = consumer.consume(500, 0.5)
            if messages:
                last_seen = time.monotonic()
            elif args.idle_seconds and time.monotonic() - last_seen > args.idle_seconds:
                break
            for message in messages[: (args.count - shown) if args.count else None]:
                try:
                    alert = codec.decode(message.value(), message.headers())
                except DecodeError as error:
                    print(f"# offset {message.partition()}/{message.offset()}: {error}",
                          file=sys.stderr)
                    continue
                print(render(alert, form), flush=True)
                shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(AlertsSettings, args)
    return mark(settings, args) if args.action == "mark" else tail(settings, args)
