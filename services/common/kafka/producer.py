"""An idempotent, compressed, batching producer that keys every message.

Quix Streams' habit: no Python callback per delivered message (it would cost more than the
featurizer's whole transform); only failed deliveries are reported. `flush` and `settle` are the
places that say whether everything produced so far is acknowledged; they count acknowledgements
per topic once nothing is outstanding, so a metric built on them counts acknowledgements, not
produce calls.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import confluent_kafka
from confluent_kafka import KafkaError

from headbits.common.kafka.client_log import client_log_config
from headbits.common.kafka.settings import KafkaConnection, connection_config

Message = confluent_kafka.Message


MAX_FAILURE_REASONS = 10
"""Failed deliveries keep only this many reasons between checks (the count is exact)."""


class DeliveryFailedError(RuntimeError):
    """Kafka refused or lost a produced message: the batch's input offsets must not be stored."""


class ProducerStalledError(DeliveryFailedError):
    """The producer's buffer stayed full for `buffer_wait_seconds`: Kafka acknowledges nothing."""


class Producer:
    """An idempotent, compressed, batching producer that keys every message.

    `produce` never raises BufferError: when librdkafka's queue is full it polls (serving
    delivery reports, making room) and retries, for at most `buffer_wait_seconds`, then raises
    ProducerStalledError. `flush` waits until every message is acknowledged and raises
    DeliveryFailedError if any was not, which is the moment a consumer may store offsets;
    `settle` does the same within a short wait and without raising for messages still in flight.
    """

    def __init__(
        self, settings: KafkaConnection, buffer_mb: int = 32, *,
        buffer_wait_seconds: float = 300.0, **overrides: object,
    ) -> None:
        self._failed = 0
        self._failure_reasons: list[str] = []
        self._failed_by_topic: Counter[str] = Counter()
        self._unsettled: Counter[str] = Counter()
        self.buffer_wait_seconds = buffer_wait_seconds
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
            self._failed += 1
            self._failed_by_topic[message.topic()] += 1
            if len(self._failure_reasons) < MAX_FAILURE_REASONS:
                self._failure_reasons.append(f"{message.topic()}: {error.str()}")

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,
        records: int = 1,
    ) -> None:
        """`timestamp_ms` 0: the record's timestamp is the produce time (CreateTime). `records`:
        how many records the value holds (a `.v2` batch), which is what acknowledgements count
        (a failed delivery counts one)."""
        deadline = None
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, timestamp=timestamp_ms)
                self._unsettled[topic] += records
                return
            except BufferError:
                now = time.monotonic()
                deadline = deadline or now + self.buffer_wait_seconds
                if now >= deadline:
                    raise ProducerStalledError(
                        f"producer buffer full for {self.buffer_wait_seconds:.0f} s: "
                        f"{len(self._producer)} messages unacknowledged") from None
                self._producer.poll(0.05)

    def produce_many(
        self,
        topic: str,
        values: Sequence[bytes],
        keys: Sequence[bytes | str],
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        produce = self._producer.produce
        fast = 0
        for value, key in zip(values, keys, strict=True):
            try:
                produce(topic, value, key, headers=headers)
                fast += 1
            except BufferError:
                self.produce(topic, value, key, headers)
        self._unsettled[topic] += fast
        self._producer.poll(0)

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports and the client's log lines without producing (an idle loop)."""
        self._producer.poll(timeout)

    def flush(self, timeout: float = 60.0) -> dict[str, int]:
        """Wait until all messages are acknowledged and return how many were, by topic since the
        last flush or settle; raise DeliveryFailedError if any was not."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryFailedError(f"{remaining} messages unacknowledged after {timeout} s")
        return self._settled()

    def settle(self, timeout: float = 0.0) -> dict[str, int] | None:
        """Serve delivery reports for up to `timeout` s. Raise DeliveryFailedError as soon as a
        delivery failed; return the acknowledgements by topic (as `flush`) once nothing is in
        flight, None while messages still are."""
        remaining = self._producer.flush(timeout)
        self._raise_failures()
        return None if remaining else self._settled()

    def _settled(self) -> dict[str, int]:
        self._raise_failures()
        acknowledged = {topic: count for topic, count in self._unsettled.items() if count}
        self._unsettled.clear()
        return acknowledged

    def _raise_failures(self) -> None:
        if not self._failed:
            return
        count, reasons = self._failed, self._failure_reasons
        for topic, failed in self._failed_by_topic.items():
            self._unsettled[topic] -= failed
        self._failed, self._failure_reasons = 0, []
        self._failed_by_topic.clear()
        raise DeliveryFailedError(f"{count} messages failed, first: {reasons[0]}")
