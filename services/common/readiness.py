"""Readiness: can this service reach its Kafka cluster now?

A Kubernetes readiness probe asks `/readyz` (served beside `/healthz` by `common.metrics`). The
answer is a real metadata request to the cluster, so it turns false while the brokers are
unreachable (a pod that cannot consume or produce should not count as available, and a rollout
should stop) while liveness stays true: restarting a pod does not bring Kafka back. Results are
kept for `cache_seconds` so that many probes cost one request.
"""

from __future__ import annotations

import threading
import time

from headbits.common.kafka import KafkaConnection, KafkaException, admin


class KafkaReadiness:
    """`check()` -> (ready, reason): ready when a broker answered a metadata request."""

    def __init__(self, settings: KafkaConnection, timeout: float = 2.0,
                 cache_seconds: float = 2.0) -> None:
        self._settings = settings
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._client = None
        self._lock = threading.Lock()
        self._checked = -float("inf")
        self._result = (False, "not checked yet")

    def check(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._checked >= self._cache_seconds:
                self._result = self._ask()
                self._checked = time.monotonic()
            return self._result

    def _ask(self) -> tuple[bool, str]:
        if self._client is None:
            self._client = admin(self._settings)
        try:
            metadata = self._client.list_topics(timeout=self._timeout)
        except KafkaException as error:
            return False, f"Kafka unreachable: {error.args[0].str()}"
        if not metadata.brokers:
            return False, "Kafka answered without brokers"
        return True, f"Kafka reachable ({len(metadata.brokers)} brokers)"
