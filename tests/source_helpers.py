"""Helpers shared by the source and pipeline tests: heads to send, and reading them back."""

from __future__ import annotations

import time

from headbits.collector.sources.base import Source, SourceItem
from headbits.common.avro import ValueCodec
from headbits.common.kafka import KafkaSettings, Producer
from headbits.common.records import PayloadHead


def make_heads(count: int, start: int = 0) -> list[PayloadHead]:
    return [
        PayloadHead(
            uid=f"C{i:08d}", ts=1700000000.0 + i / 1000, sensor="zeek-1", orig_h="192.0.2.7",
            orig_p=40000 + i % 20000, resp_h="198.51.100.9", resp_p=53, transport="udp",
            services=("dns",), orig_head=bytes([i % 256]) * 30, resp_head=b"\x00\x01" * 20,
            orig_bytes_seen=30, resp_bytes_seen=40, orig_gap=False, resp_gap=False,
        )
        for i in range(start, start + count)
    ]


def read_until(source: Source, count: int, timeout: float = 30.0) -> list[SourceItem]:
    """Items read from `source` until `count` arrived or `timeout` seconds passed."""
    items: list[SourceItem] = []
    deadline = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < deadline:
        items += source.read(1000, 0.2)
    return items


def produce_heads(settings: KafkaSettings, topic: str, heads: list[PayloadHead]) -> None:
    """Write heads to a Kafka topic as the collector does (Avro values keyed by uid)."""
    codec = ValueCodec("payload_head", topic)
    producer = Producer(settings)
    producer.produce_many(topic, codec.encode_many([h.to_dict() for h in heads]),
                          [h.uid for h in heads], codec.headers)
    producer.flush()
