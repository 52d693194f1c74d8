"""Follow whole topics from their first record, outside any consumer group: a replicated table.

Every scorer replica must see every suppression rule (and every other replica's open alert
windows), not a partition share of them, so these topics are read with all their partitions
assigned, from the beginning, never committing. `catch_up` reads until the end offsets of the
moment it is called (the table is complete as of start); `poll` then returns whatever arrived
since, without waiting, so the caller applies changes between batches. Compacted topics keep this
cheap: the first read is one record per key.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import confluent_kafka
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from headbits.common.kafka.admin import create_missing
from headbits.common.kafka.client_log import client_log_config
from headbits.common.kafka.settings import DAY_MS, KafkaConnection, connection_config
from headbits.common.settings import SettingsError

Message = confluent_kafka.Message
_NO_LEADER_YET = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT)


class MissingTopicError(SettingsError):
    """A followed topic does not exist: the deployment must create it (the chart's KafkaTopics)
    or let the service create it (`create_topics`). Following nothing instead would silently
    drop every suppression rule, so the service stops with this message."""


class TopicFollower:
    """All partitions of `topics`, from the beginning; `catch_up` once, then `poll` between batches.
    Tombstones (null values) come through: for a compacted topic they are deletions."""

    def __init__(self, settings: KafkaConnection, topics: Sequence[str],
                 timeout: float = 10.0) -> None:
        self._consumer = confluent_kafka.Consumer({
            **connection_config(settings), **client_log_config(),
            "group.id": f"headbits-follower-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "fetch.wait.max.ms": 100,  # a new rule reaches the replica within a batch or two
        })
        self._ends: dict[tuple[str, int], int] = {}
        partitions = []
        for topic in topics:
            metadata = self._consumer.list_topics(topic, timeout=timeout).topics[topic]
            if metadata.error is not None:
                if metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    self._consumer.close()
                    raise MissingTopicError(
                        f"topic {topic!r} does not exist: create it (the chart's KafkaTopics "
                        "do) or set create_topics: true")
                raise KafkaException(metadata.error)
            for partition in metadata.partitions:
                partitions.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
                self._ends[(topic, partition)] = self._end(topic, partition, timeout)
        self._consumer.assign(partitions)

    def _end(self, topic: str, partition: int, timeout: float) -> int:
        """The partition's end offset; a topic created a moment ago may not have a leader yet,
        which is retried until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout)[1]
            except KafkaException as error:
                if error.args[0].code() not in _NO_LEADER_YET or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def catch_up(self, timeout: float = 30.0) -> list[Message]:
        """Every record up to the end offsets as of construction; TimeoutError past `timeout`."""
        messages: list[Message] = []
        waiting = {key: end for key, end in self._ends.items() if end > 0}
        deadline = time.monotonic() + timeout
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"still reading {sorted(waiting)} after {timeout} s")
            messages += self._consume(1000, 0.2)
            # The position, not the last record: compaction may have removed the last offsets.
            positions = self._consumer.position(
                [TopicPartition(topic, partition) for topic, partition in waiting])
            for tp in positions:
                if tp.offset >= waiting[(tp.topic, tp.partition)]:
                    del waiting[(tp.topic, tp.partition)]
        return messages

    def poll(self, max_messages: int = 1000) -> list[Message]:
        """Records that arrived since the last call, without waiting for more."""
        return self._consume(max_messages, 0.0)

    def _consume(self, max_messages: int, timeout: float) -> list[Message]:
        found = []
        for message in self._consumer.consume(max_messages, timeout):
            error = message.error()
            if error is None:
                found.append(message)
            elif error.fatal():
                raise KafkaException(error)
        return found

    def close(self) -> None:
        self._consumer.close()


def ensure_compacted_topics(settings: KafkaConnection, names: Sequence[str],
                            partitions: int = -1, replication: int = -1,
                            retention_days: float | None = None,
                            timeout: float = 30.0) -> list[str]:
    """Create the missing ones of `names` as compacted topics (latest value per key kept, a null
    value deletes the key); with `retention_days`, `compact,delete`: keys not rewritten for that
    long go too. Returns the created."""
    config = {"cleanup.policy": "compact"}
    if retention_days is not None:
        config = {"cleanup.policy": "compact,delete",
                  "retention.ms": str(int(retention_days * DAY_MS))}
    return create_missing(settings, names, lambda name: confluent_kafka.admin.NewTopic(
        name, num_partitions=partitions, replication_factor=replication, config=config), timeout)
