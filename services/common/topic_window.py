"""The decoded records a topic received since a time: for jobs that look back over a window.

The rollout controller (scores, drift) and the trainer (drift) read a recent stretch of a topic
the services write, without joining a consumer group. A value that does not decode is skipped
and counted: these topics are written by headbits services, which dead-letter their own bad
input, so a stray value is no input to judge by.
"""

from __future__ import annotations

from collections.abc import Iterator

from headbits.common.avro import DecodeError, open_registry
from headbits.common.columnar import RowDecoder
from headbits.common.kafka import KafkaConnection, read_offset_ranges, window_offsets


def decoded_since(settings: KafkaConnection, topic: str, schema: str, since: float,
                  batch_size: int = 5000, skipped: list[int] | None = None
                  ) -> Iterator[list[dict]]:
    """Batches of the records of `topic` appended since `since` (epoch seconds, by Kafka
    timestamp), decoded with `schema`; `skipped[0]` counts values that did not decode. A topic
    that does not exist yet (nothing was ever written to it) has no records."""
    codec = RowDecoder(schema, topic, open_registry(settings))
    ranges = window_offsets(settings, topic, int(since * 1000), missing_ok=True)
    for messages in read_offset_ranges(settings, topic, ranges, batch_size):
        records = []
        for message in messages:
            try:
                records += codec.rows(message.value(), message.headers())
            except DecodeError:
                if skipped is not None:
                    skipped[0] += 1
        yield records
