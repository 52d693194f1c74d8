"""An idempotent, compressed, batching producer that keys every message.

Quix Streams' habit: no Python callback per delivered message (it would cost more than the
featurizer's whole transform); only failed deliveries are reported, and `flush` is the one place
that says whether everything produced so far is acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence

import confluent_kafka
from confluent_kafka import KafkaError

from headbits.common.kafka.client_log import client_log_config
from headbits.common.kafka.settings import KafkaConnection, connection_config

Message = confluent_kafka.Message


class DeliveryFailedError(RuntimeError):
    """Kafka refused or lost a produced message: the batch's input offsets must not be stored."""


class Producer:
    """An idempotent, compressed, batching producer that keys every message.

    `produce` never raises BufferError: when librdkafka's queue is full it polls (serving
    delivery reports, making room) and retries. `flush` waits until every message is acknowledged
    and raises DeliveryFailedError if any was not, which is the moment a consumer may store offsets.
    """

    def __init__(
        self, settings: KafkaConnection, buffer_mb: int = 32, **overrides: object
    ) -> None:
        self._failures: list[str] = []
        config = {
            **connection_config(settings),
            **client_log_config(),
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 5,  # services produce a whole batch at once: waiting adds only latency
            "batch.num.messages": 10000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 200_000,
            "queue.buffering.max.kbytes": buffer_mb * 1024,
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            **overrides,
        }
        self._producer = confluent_kafka.Producer(config)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,
    ) -> None:
        """`timestamp_ms` 0: the record's timestamp is the produce time (CreateTime)."""
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, timestamp=timestamp_ms)
                return
            except BufferError:
                self._producer.poll(0.05)

    def produce_many(
        self,
        topic: str,
        values: Sequence[bytes],
        keys: Sequence[bytes | str],
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        produce = self._producer.produce
        for value, key in zip(values, keys, strict=True):
            try:
                produce(topic, value, key, headers=headers)
            except BufferError:
                self.produce(topic, value, key, headers)
        self._producer.poll(0)

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports and the client's log lines without producing (an idle loop)."""
        self._producer.poll(timeout)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until all messages are acknowledged; raise DeliveryFailedError if any was not."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryFailedError(f"{remaining} messages unacknowledged after {timeout} s")
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryFailedError(f"{len(failures)} messages failed, first: {failures[0]}")
