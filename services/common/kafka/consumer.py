"""A consumer-group member that consumes in batches and stores offsets only when told."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from headbits.common.kafka.client_log import client_log_config
from headbits.common.kafka.settings import KafkaConnection, connection_config

Message = confluent_kafka.Message


# The broker refuses this client's principal: retrying cannot help, and skipping would leave
# the service consuming nothing without a word.
REFUSED = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
})


class Consumer:
    """A consumer-group member that consumes in batches and stores offsets only when told.

    Auto-commit runs in the background but commits only stored offsets; `store` is called by the
    service loop once a batch's outputs are acknowledged. Consumer lag per partition comes from
    librdkafka's statistics, reported to `on_lag(total_lag)` every `stats_interval_ms`.
    """

    def __init__(
        self,
        settings: KafkaConnection,
        group_id: str,
        topics: Sequence[str],
        on_lag: Callable[[int], None] | None = None,
        stats_interval_ms: int = 5000,
        **overrides: object,
    ) -> None:
        self._on_lag = on_lag
        config = {
            **connection_config(settings),
            **client_log_config(),
            "group.id": group_id,
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.min.bytes": 1,
            # Prefetch bound: 4 MB is about 20k connections as .v2 batches, a second of a
            # service's work. librdkafka checks the bound only between fetches and queues a
            # whole fetch response (decompressed) at once, so under a backlog it holds more
            # than this: at 16 MB the featurizer peaked at 194-226 MB RSS in a 10x overload.
            "queued.max.messages.kbytes": 4096,
            # A full prefetch queue postpones the next fetch by this much (librdkafka's default
            # is 1 s): at 4 MB a backlog then drained at 4 MB/s, the featurizer at 39k rows/s.
            "fetch.queue.backoff.ms": 10,
            **overrides,
        }
        if on_lag is not None:
            config["statistics.interval.ms"] = stats_interval_ms
            config["stats_cb"] = self._on_stats
        self._consumer = confluent_kafka.Consumer(config)
        self._consumer.subscribe(list(topics))

    def _on_stats(self, text: str) -> None:
        stats = json.loads(text)
        lag = 0
        for topic in stats.get("topics", {}).values():
            for partition, numbers in topic.get("partitions", {}).items():
                if partition != "-1" and numbers.get("consumer_lag", -1) >= 0:
                    lag += numbers["consumer_lag"]
        if self._on_lag is not None:
            self._on_lag(lag)

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` records (errors that only inform are skipped, fatal ones raise)."""
        messages = self._consumer.consume(max_messages, timeout)
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.fatal() or error.code() in REFUSED:
                raise KafkaException(error)
        return records

    def store(self, messages: Iterable[Message]) -> None:
        """Mark these records done: the next auto-commit (or `commit`) commits past them.

        Partitions revoked since the records were consumed are skipped: their new owner
        resumes from the last commit, so those records are processed again (at-least-once).
        """
        # A partition's records arrive in offset order, so its last record has the highest.
        latest = {(m.topic(), m.partition()): m.offset() for m in messages}
        if not latest:
            return
        try:
            self._consumer.store_offsets(
                offsets=[TopicPartition(t, p, offset + 1) for (t, p), offset in latest.items()]
            )
        except KafkaException as error:
            if error.args[0].code() != KafkaError._STATE:  # none of them is assigned any more
                raise

    def commit(self) -> None:
        """Commit stored offsets now (on shutdown); nothing stored is not an error."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                raise

    def close(self) -> None:
        self._consumer.close()
