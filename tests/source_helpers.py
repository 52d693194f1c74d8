"""Helpers shared by the source and pipeline tests: heads to send, a running Zeek WebSocket
stand-in, captures, and reading heads back."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from headbits.collector.pcap import LINKTYPE_ETHERNET
from headbits.collector.sources.base import Source, SourceItem
from headbits.common.avro import ValueCodec
from headbits.common.kafka import KafkaSettings, Producer
from headbits.common.records import PayloadHead
from headbits.devtools.zeek_replay import WebSocketReplayServer
from tests.test_pcap import (
    REQUEST,
    RESPONSE,
    V4_CLIENT,
    V4_SERVER,
    ethernet,
    ipv4,
    tcp_conversation,
    write_pcap,
)


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


def capture(tmp_path: Path, name: str, clients: int) -> Path:
    frames = []
    for number in range(clients):
        client = (V4_CLIENT[0], V4_CLIENT[1] + number)
        packets = tcp_conversation(ipv4, client, V4_SERVER, REQUEST, RESPONSE)
        frames += [ethernet(ip) for ip in packets]
    return write_pcap(tmp_path / name, LINKTYPE_ETHERNET, frames)


def read_until(source: Source, count: int, timeout: float = 30.0) -> list[SourceItem]:
    """Items read from `source` until `count` arrived or `timeout` seconds passed."""
    items: list[SourceItem] = []
    deadline = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < deadline:
        items += source.read(1000, 0.2)
    return items


class RunningServer:
    def __init__(self, server: WebSocketReplayServer, ssl: object = None) -> None:
        self.server = server
        self.scheme = "ws" if ssl is None else "wss"
        self.loop = asyncio.new_event_loop()
        self.listener = self.loop.run_until_complete(server.serve("127.0.0.1", 0, ssl=ssl))
        self.port = self.listener.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/v1/messages/json"

    def stop(self) -> None:
        async def shutdown() -> None:
            self.listener.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def produce_heads(settings: KafkaSettings, topic: str, heads: list[PayloadHead]) -> None:
    """Write heads to a Kafka topic as the collector does (Avro values keyed by uid)."""
    codec = ValueCodec("payload_head", topic)
    producer = Producer(settings)
    producer.produce_many(topic, codec.encode_many([h.to_dict() for h in heads]),
                          [h.uid for h in heads], codec.headers)
    producer.flush()
