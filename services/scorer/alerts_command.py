"""Read alerts from Kafka: `headbits alerts tail` prints them as they arrive.

One line per alert for an analyst (time, uid, 5-tuple, reason, score/threshold, predicted vs
expected protocol, the head bytes), or `--json` for one JSON object per line (bytes as hex) to
pipe into jq or a SIEM forwarder. `--from-beginning` reads the whole retained topic; `--count N`
stops after N alerts; `--idle-seconds S` stops once no alert came for S seconds. Reads with its
own consumer group and never commits, so it does not disturb other consumers.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import dataclass

import orjson

from headbits.common.avro import DecodeError, ValueCodec, open_registry
from headbits.common.kafka import AlertsTopic, Consumer, KafkaConnection
from headbits.common.settings import add_settings_arguments, settings_from_args


@dataclass(frozen=True)
class AlertsSettings(KafkaConnection, AlertsTopic):
    """Only the Kafka settings: which cluster and which alerts topic."""


def printable(head: bytes, limit: int = 32) -> str:
    """Bytes as an analyst reads them: ASCII where printable, dots elsewhere, then hex."""
    cut = head[:limit]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in cut)
    return f"{text!r} {cut.hex()}" if cut else "(none)"


def format_alert(alert: dict) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(alert["ts"]))
    head = alert[f"{alert['direction']}_head"]
    return (
        f"{when} {alert['uid']} {alert['transport']} {alert['orig_h']}:{alert['orig_p']} -> "
        f"{alert['resp_h']}:{alert['resp_p']} [{alert['reason']}] "
        f"score {alert['score']:.4f}/{alert['threshold']:.4f} ({alert['direction']}) "
        f"predicted {alert['predicted_protocol']} ({alert['predicted_probability']:.2f}) "
        f"expected {alert['expected_protocol']} by {alert['expected_source']} "
        f"model {alert['model_name']}/{alert['model_version']} "
        f"{alert['direction']} head {printable(head)}"
    )


def alert_json(alert: dict) -> str:
    return orjson.dumps(
        {k: v.hex() if isinstance(v, bytes) else v for k, v in alert.items()}
    ).decode()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("tail",), help="tail: print alerts as they arrive")
    parser.add_argument("--json", action="store_true", help="one JSON object per alert")
    parser.add_argument("--from-beginning", action="store_true", help="read the retained topic")
    parser.add_argument("--count", type=int, default=0, help="stop after this many alerts")
    parser.add_argument("--idle-seconds", type=float, default=0.0,
                        help="stop after this long without an alert (0: never)")
    add_settings_arguments(parser, AlertsSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(AlertsSettings, args)
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
                print(alert_json(alert) if args.json else format_alert(alert), flush=True)
                shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
