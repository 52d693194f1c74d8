"""Liveness and readiness of a service against a real Kafka broker that is stopped under it.

The chart's probes ask `/healthz` (liveness) and `/readyz` (readiness) on the metrics port. A
featurizer process runs against a broker of its own (the suite's shared broker must stay up);
while the broker runs both answer 200; once it is stopped, readiness turns 503 with the reason
and liveness stays 200 (restarting the pod would not bring Kafka back).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from headbits.common.metrics import Health, ServiceMetrics, serve
from headbits.devtools.harness import ServiceProcess, Topics

pytestmark = pytest.mark.kafka


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(port: int, path: str, status: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        got, body = get(port, path)
        if got == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still answers {got} ({body.strip()}), not {status}")
        time.sleep(0.5)


def test_readiness_needs_a_live_loop_and_its_dependency() -> None:
    health = Health(stale_after=60)
    state = {"ready": (True, "dependency answers")}
    server = serve(ServiceMetrics("probe-test"), health, "127.0.0.1", 0, lambda: state["ready"])
    port = server.server_address[1]
    try:
        assert get(port, "/readyz") == (200, "dependency answers\n")
        state["ready"] = (False, "Kafka unreachable: timed out")
        assert get(port, "/readyz") == (503, "Kafka unreachable: timed out\n")
        assert get(port, "/healthz")[0] == 200
        state["ready"] = (True, "dependency answers")
        health.stop()
        assert get(port, "/readyz") == (503, "unhealthy\n")
        assert get(port, "/healthz")[0] == 503
    finally:
        server.shutdown()


def test_readiness_is_false_while_kafka_is_stopped(tmp_path) -> None:
    from headbits.devtools import kafka_broker

    broker = kafka_broker.start(partitions=1)
    featurizer = None
    try:
        topics = Topics(broker.bootstrap_servers, partitions=1)
        featurizer = ServiceProcess("featurizer", topics.env, tmp_path)
        port = featurizer.wait_started()["metrics_port"]
        assert "Kafka reachable (1 brokers)" in wait_for(port, "/readyz", 200, timeout=30)
        assert get(port, "/healthz")[0] == 200

        broker.stop()
        reason = wait_for(port, "/readyz", 503, timeout=60)
        assert reason.startswith("Kafka unreachable"), reason
        assert get(port, "/healthz")[0] == 200, "liveness must not restart a pod for Kafka"
        assert featurizer.process.poll() is None, "the service waits for Kafka, it does not exit"
    finally:
        if featurizer is not None and featurizer.process.poll() is None:
            featurizer.process.kill()
            featurizer.process.wait(30)
        broker.stop()
