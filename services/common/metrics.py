"""Prometheus metrics and the health endpoint of a service, served by one small HTTP server.

`GET /metrics` is the Prometheus text format; `GET /healthz` answers 200 while the service loop
has reported progress within `stale_after` seconds (an idle loop still reports) and 503 once it
has stalled or is shutting down, which is what a Kubernetes liveness probe wants. `GET /readyz`
(the readiness probe) answers 200 only while the loop is healthy *and* `ready()` says the
service's dependencies answer (common.readiness: Kafka), 503 with the reason otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The counters every headbits service exports, in its own registry."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"service": service}
        common = {"registry": self.registry, "namespace": "headbits"}
        self.consumed = Counter(
            "consumed_records", "records read from Kafka or a source", ["service"], **common
        ).labels(**labels)
        self.produced = Counter(
            "produced_records", "records acknowledged by Kafka, by topic", ["service", "topic"],
            **common,
        )
        self.dead_lettered = Counter(
            "dead_lettered_records", "records sent to the dead-letter topic, by reason class",
            ["service", "reason"], **common,
        )
        self.batch_size = Histogram(
            "batch_size_records", "records per processed batch", ["service"],
            buckets=BATCH_BUCKETS, **common,
        ).labels(**labels)
        self.batch_seconds = Histogram(
            "batch_seconds",
            "wall time from a batch's decode to its acknowledgement (overlaps the next batch)",
            ["service"], buckets=LATENCY_BUCKETS, **common,
        ).labels(**labels)
        self.record_age_seconds = Histogram(
            "record_age_seconds", "time from the input record's Kafka timestamp to its ack",
            ["service"], buckets=LATENCY_BUCKETS, **common,
        ).labels(**labels)
        self.consumer_lag = Gauge(
            "consumer_lag_records", "records behind the end of the assigned partitions",
            ["service"], **common,
        ).labels(**labels)
        self.kafka_client_events = Counter(
            "kafka_client_log_lines", "lines the Kafka client (librdkafka) logged, by level",
            ["service", "level"], **common,
        )
        self._service = service

    def count_kafka_client_event(self, level: str) -> None:
        self.kafka_client_events.labels(self._service, level).inc()

    def count_produced(self, topic: str, count: int) -> None:
        if count:
            self.produced.labels(self._service, topic).inc(count)

    def count_dead_letter(self, reason: str) -> None:
        self.dead_lettered.labels(self._service, reason_class(reason)).inc()


def reason_class(reason: str) -> str:
    """A bounded label for a free-text reason: the words before the first colon."""
    return reason.split(":", 1)[0].strip()[:40] or "unknown"


class Health:
    """Liveness as seen by the loop: `beat()` on every iteration, `stop()` at shutdown."""

    def __init__(self, stale_after: float = 60.0) -> None:
        self._stale_after = stale_after
        self._last = time.monotonic()
        self._stopping = False

    def beat(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stopping = True

    def healthy(self) -> bool:
        return not self._stopping and time.monotonic() - self._last < self._stale_after


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str) -> None:
    """One whole HTTP response (status, type, length, body) from a request handler."""
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serve(
    metrics: ServiceMetrics,
    health: Health,
    host: str,
    port: int,
    ready: Callable[[], tuple[bool, str]] | None = None,
) -> ThreadingHTTPServer:
    """Start the metrics/health server on a daemon thread; port 0 picks a free one.

    `ready()` -> (ready, reason) decides /readyz besides liveness; None: ready when healthy.
    """

    def readiness() -> tuple[bool, str]:
        if not health.healthy():
            return False, "unhealthy"
        return ready() if ready is not None else (True, "ok")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, status, kind = generate_latest(metrics.registry), 200, CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                ok = health.healthy()
                status, kind = (200 if ok else 503), "text/plain"
                body = b"ok\n" if ok else b"unhealthy\n"
            elif self.path.startswith("/readyz"):
                ok, reason = readiness()
                status, kind, body = (200 if ok else 503), "text/plain", f"{reason}\n".encode()
            else:
                body, status, kind = (b"not found: try /metrics, /healthz or /readyz\n", 404,
                                      "text/plain")
            reply(self, status, body, kind)

        def log_message(self, *args: object) -> None:
            """Requests are not logged: Prometheus scrapes every few seconds."""

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
