"""Convert a retained `.v1` topic window into `.v2` batches, so an upgrade strands no data.

Reads the last --window-hours of --from-topic (every partition up to its end offset at start,
without joining any consumer group, as the trainer reads) and writes --features-topic (or
--heads-topic with --kind heads) in the `.v2` format: one Arrow batch per sensor and consumed
chunk, keyed by the sensor, each message stamped with the Kafka timestamp of its oldest row, so
the converted window covers the same hours for the trainer's time-based window. `.v2` messages
already on the source are copied row for row the same way; values that decode as neither are
counted and left out (the services dead-lettered them when they first read them). Run it once
after the upgrade, then point the trainer at the `.v2` topic (the services read `.v1` records
on their input topics meanwhile). Prints one JSON object of counts; exit 1 when a delivery
fails.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from headbits.common.avro import DecodeError, open_registry
from headbits.common.columnar import (
    RowDecoder,
    batch_schema,
    encode_within,
    records_table,
    split_by_key,
)
from headbits.common.kafka import (
    DeliveryFailedError,
    FeaturesTopic,
    HeadsTopic,
    KafkaConnection,
    Producer,
    ProducerBuffer,
    TopicCreation,
    ensure_topics,
    read_offset_ranges,
    window_offsets,
)
from headbits.common.settings import (
    SettingsError,
    add_settings_arguments,
    setting,
    settings_from_args,
)

SCHEMAS = {"heads": "payload_head", "features": "features"}


@dataclass(frozen=True)
class ConvertSettings(KafkaConnection, TopicCreation, ProducerBuffer, HeadsTopic, FeaturesTopic):
    """Writes to the heads_topic or features_topic setting (the .v2 topics by default)."""

    kind: str = setting("features", "what the topic holds: heads or features")
    from_topic: str = setting("headbits.features.v1", "the .v1 topic to read")
    window_hours: float = setting(720.0, "how far back to convert (720: the features' 30 d)")
    batch_rows: int = setting(2000, "largest batch written per message")

    @property
    def to_topic(self) -> str:
        return self.heads_topic if self.kind == "heads" else self.features_topic


def convert(settings: ConvertSettings) -> dict[str, int]:
    """Convert the window; returns counts (messages read, rows written, messages written,
    undecodable values)."""
    if settings.kind not in SCHEMAS:
        raise SettingsError(f"kind {settings.kind!r} is not one of {sorted(SCHEMAS)}")
    schema = SCHEMAS[settings.kind]
    if settings.create_topics:
        ensure_topics(settings, [settings.to_topic])
    since_ms = int((time.time() - settings.window_hours * 3600) * 1000)
    ranges = window_offsets(settings, settings.from_topic, since_ms)
    decoder = RowDecoder(schema, settings.from_topic, open_registry(settings))
    producer = Producer(settings, settings.producer_buffer_mb)
    headers = batch_schema(schema).headers
    counts = {"messages_read": 0, "rows_written": 0, "messages_written": 0, "undecodable": 0}
    for messages in read_offset_ranges(settings, settings.from_topic, ranges,
                                       settings.batch_rows):
        rows: list[dict] = []
        stamps: list[int] = []
        for message in messages:
            counts["messages_read"] += 1
            try:
                found = decoder.rows(message.value(), message.headers())
            except DecodeError:
                counts["undecodable"] += 1
                continue
            rows += found
            stamps += [message.timestamp()[1]] * len(found)
        if not rows:
            continue
        table = records_table(schema, rows)
        stamp_column = np.array(stamps, np.int64)
        for sensor, value, oldest in _batches(table, stamp_column, settings.batch_rows):
            producer.produce(settings.to_topic, value, sensor, headers, timestamp_ms=oldest)
            counts["messages_written"] += 1
        counts["rows_written"] += table.num_rows
        producer.poll(0)
    producer.flush()
    counts["undecodable"] += decoder.bad_rows
    return counts


def _batches(table: pa.Table, stamps: np.ndarray, max_rows: int):
    """(sensor, value, oldest row's timestamp) of each output message."""
    for sensor, rows in split_by_key(table.column("sensor"), max_rows):
        for value, start, stop in encode_within(table.take(pa.array(rows))):
            yield sensor, value, int(stamps[rows[start:stop]].min())


def configure(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, ConvertSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(ConvertSettings, args)
    try:
        counts = convert(settings)
    except DeliveryFailedError as error:
        print(json.dumps({"error": str(error)}))
        return 1
    print(json.dumps(counts))
    return 0
