"""Fixed offset ranges of a topic: the trainer's window, read without joining any group.

`window_offsets` says where a time window starts and where the topic ends now, so a read of those
ranges ends even while producers keep writing; `read_offset_ranges` reads exactly those records.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from headbits.common.kafka.client_log import client_log_config
from headbits.common.kafka.settings import KafkaConnection, connection_config

Message = confluent_kafka.Message


def window_offsets(
    settings: KafkaConnection, topic: str, since_ms: int, timeout: float = 10.0,
    missing_ok: bool = False,
) -> dict[int, tuple[int, int]]:
    """Partition -> (first offset whose timestamp is >= `since_ms`, end offset now).

    A partition with no record that recent gets (end, end). Records appended after this call are
    beyond the end offsets, so reading these ranges ends even while producers keep writing.
    With `missing_ok`, a topic that does not exist (yet) is an empty window, not an error.
    """
    probe = confluent_kafka.Consumer({
        **connection_config(settings), **client_log_config(), "group.id": "headbits-probe",
    })
    try:
        metadata = probe.list_topics(topic, timeout=timeout).topics[topic]
        if metadata.error is not None:
            if missing_ok and metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return {}
            raise KafkaException(metadata.error)
        ends = {
            partition: probe.get_watermark_offsets(TopicPartition(topic, partition), timeout)[1]
            for partition in metadata.partitions
        }
        found = probe.offsets_for_times(
            [TopicPartition(topic, partition, since_ms) for partition in ends], timeout
        )
    finally:
        probe.close()
    for tp in found:
        if tp.error is not None:
            raise KafkaException(tp.error)
    return {
        tp.partition: (tp.offset if 0 <= tp.offset <= ends[tp.partition] else ends[tp.partition],
                       ends[tp.partition])
        for tp in found
    }


def read_offset_ranges(
    settings: KafkaConnection,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    batch_size: int = 5000,
    idle_timeout: float = 60.0,
) -> Iterator[list[Message]]:
    """Batches of the records in `ranges` (partition -> [start, end)), then the iterator ends.

    Partitions are assigned, not subscribed, under a throw-away group id with commits off: the
    reader joins no consumer group and commits nothing, so no service's group is disturbed.
    Raises TimeoutError if no partition advances for `idle_timeout` seconds (broker gone).
    """
    consumer = confluent_kafka.Consumer({
        **connection_config(settings),
        **client_log_config(),
        "group.id": f"headbits-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # a start offset deleted by retention meanwhile
    })
    remaining = {p: end for p, (start, end) in ranges.items() if start < end}
    try:
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in remaining])
        last_progress = time.monotonic()
        while remaining:
            batch = []
            for message in consumer.consume(batch_size, 1.0):
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                elif message.offset() < remaining.get(message.partition(), -1):
                    batch.append(message)
            positions = consumer.position([TopicPartition(topic, p) for p in remaining])
            for position in positions:
                if position.offset >= remaining[position.partition]:
                    del remaining[position.partition]
            if batch or not remaining:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > idle_timeout:
                raise TimeoutError(
                    f"{topic}: no record arrived for {idle_timeout:g} s with partitions "
                    f"{sorted(remaining)} unfinished (is the broker reachable?)"
                )
            if batch:
                yield batch
    finally:
        consumer.close()
