"""Alerts back into Zeek: publish the scorer's alerts to a sensor as `HeadBits::alert` events.

The Zeek package subscribes to `headbits/alerts` and turns each event into a Notice
(`HeadBits::Anomalous_Protocol` for anomalous bytes, `HeadBits::Novel_Protocol` for a protocol
other than the expected one) carrying the connection's uid, so the alert appears in notice.log
beside conn.log, where analysts already look. The path is optional and best effort: the Kafka
alerts topic stays the record of every alert, so a sensor that cannot be reached costs a log
line and a count, never the scorer's progress. One publisher talks to one Zeek WebSocket server
(a standalone sensor, or a cluster's manager).

The event, in Broker's JSON v1 form (zeek/README.md documents the same list):
`HeadBits::alert(uid: string, orig_h: addr, orig_p: port, resp_h: addr, resp_p: port,
reason: string, score: double, threshold: double, predicted: string, expected: string,
model: string)`; `reason` is the alert's comma-joined reasons.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable

import orjson
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

LOG = logging.getLogger(__name__)

ALERT_EVENT = "HeadBits::alert"
ALERT_TOPIC = "headbits/alerts"


def _typed(kind: str, data: object) -> dict:
    return {"@data-type": kind, "data": data}


def alert_message(alert: dict, topic: str = ALERT_TOPIC) -> bytes:
    """The JSON v1 data message of one alert record (schemas/alert.avsc fields)."""
    transport = alert["transport"]
    args = [
        _typed("string", alert["uid"]),
        _typed("address", alert["orig_h"]),
        _typed("port", f"{alert['orig_p']}/{transport}"),
        _typed("address", alert["resp_h"]),
        _typed("port", f"{alert['resp_p']}/{transport}"),
        _typed("string", alert["reason"]),
        _typed("real", float(alert["score"])),
        _typed("real", float(alert["threshold"])),
        _typed("string", alert["predicted_protocol"] or ""),
        _typed("string", alert["expected_protocol"] or ""),
        _typed("string", f"{alert['model_name']}/{alert['model_version']}"),
    ]
    event = _typed("vector", [
        _typed("count", 1), _typed("count", 1),
        _typed("vector", [_typed("string", ALERT_EVENT), _typed("vector", args)]),
    ])
    return orjson.dumps({"type": "data-message", "topic": topic, **event})


class ZeekAlertPublisher:
    """Sends alerts to one Zeek WebSocket server (`ws[s]://sensor:27759/v1/messages/json`).

    Connects on first use and again after a failure; `counts` says how many alerts were sent
    and how many could not be (the sensor was away or refused the handshake).
    """

    def __init__(self, url: str, topic: str = ALERT_TOPIC,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
        self.url = url
        self.topic = topic
        self._ssl_context = ssl_context
        self._timeout = timeout
        self._client: ClientConnection | None = None
        self.counts = {"sent": 0, "failed": 0}

    def publish(self, alerts: Iterable[dict]) -> int:
        """Send `alerts`; returns how many were sent (the rest are counted as failed)."""
        messages = [alert_message(alert, self.topic) for alert in alerts]
        if not messages:
            return 0
        try:
            client = self._connected()
            for message in messages:
                client.send(message.decode())
        except (OSError, WebSocketException, ValueError) as error:
            self.counts["failed"] += len(messages)
            LOG.warning("Zeek alerts %s: %s; %d alerts not sent as notices (they are in Kafka)",
                        self.url, error, len(messages))
            self.close()
            return 0
        self.counts["sent"] += len(messages)
        return len(messages)

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def _connected(self) -> ClientConnection:
        if self._client is None:
            client = connect(self.url, ssl=self._ssl_context, open_timeout=self._timeout)
            client.send("[]")  # publish-only: no subscriptions
            ack = orjson.loads(client.recv(self._timeout))
            if not isinstance(ack, dict) or ack.get("type") != "ack":
                client.close()
                raise ValueError(f"Zeek answered the handshake with {ack!r:.200}")
            self._client = client
        return self._client
