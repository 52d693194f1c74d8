"""The `Source` contract (collector/sources/base.py), run against every implementation.

Each implementation is built by a factory that hands it a known number of heads: captures for the
replay source, an Avro file for the heads-file source, the Zeek WebSocket stand-in for the
WebSocket source, a real Broker endpoint for the native source (where the bindings exist). The
same tests then check what the collector loop relies on: the `max_items` bound, `[]` when a live
source has nothing within the timeout, `EndOfSource` when a finite one is exhausted, `close()`
twice, and reading after `close()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from headbits.collector.pcap import read_capture
from headbits.collector.sources.base import EndOfSource, Source, SourceItem
from headbits.collector.sources.headsfile import HeadsFileSource
from headbits.collector.sources.replay import ReplaySource
from headbits.collector.sources.websocket import WebSocketSource
from headbits.collector.zeek_event import DEFAULT_TOPIC
from headbits.common.avro import write_heads_file
from headbits.common.columnar import batch_schema
from headbits.common.records import PayloadHead
from headbits.devtools.zeek_replay import WebSocketReplayServer, data_messages
from tests.source_helpers import RunningServer, capture, make_heads

HEADS = 25
SLACK = 2.0  # seconds a read may overrun its timeout on a loaded 2-core machine


@dataclass
class Made:
    source: Source
    expected: int  # items the source will deliver
    finite: bool


Factory = Callable[[Path], Made]


def replay(tmp_path: Path) -> Made:
    paths = [capture(tmp_path, "a.pcap", clients=3), capture(tmp_path, "b.pcap", clients=2)]
    expected = sum(len(read_capture(path).heads) for path in paths)
    return Made(ReplaySource(paths, n=16), expected, finite=True)


def heads_file(tmp_path: Path) -> Made:
    path = tmp_path / "heads.avro"
    write_heads_file(path, make_heads(HEADS))
    return Made(HeadsFileSource([path]), HEADS, finite=True)


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], None]]]:
    actions: list[Callable[[], None]] = []
    yield actions
    for action in reversed(actions):
        action()


def websocket(tmp_path: Path, cleanup: list) -> Made:
    server = RunningServer(WebSocketReplayServer(data_messages(make_heads(HEADS), DEFAULT_TOPIC)))
    cleanup.append(server.stop)
    source = WebSocketSource(server.url, "zeek-1", reconnect_initial=0.1)
    cleanup.append(source.close)
    return Made(source, HEADS, finite=False)


def native_broker(tmp_path: Path, cleanup: list) -> Made:
    broker = pytest.importorskip("broker", reason="Broker bindings: scripts/link-broker.sh")
    from headbits.collector.sources.broker import BrokerSource, BrokerTLS, from_typed, make_endpoint
    from headbits.collector.zeek_event import encode_event

    tls = BrokerTLS(disable=True)
    zeek = make_endpoint(tls)
    cleanup.append(zeek.shutdown)
    port = zeek.listen("127.0.0.1", 0)
    source = BrokerSource("127.0.0.1", port, "zeek-1", tls=tls)
    cleanup.append(source.close)
    deadline = time.monotonic() + 10
    while not any(str(t) == DEFAULT_TOPIC for t in zeek.peer_subscriptions()):
        if time.monotonic() > deadline:
            raise AssertionError("the Broker source never peered")
        time.sleep(0.05)
    for head in make_heads(HEADS):
        zeek.publish(DEFAULT_TOPIC, broker.Data(from_typed(encode_event(head))))
    return Made(source, HEADS, finite=False)


FACTORIES = {
    "replay": lambda tmp_path, cleanup: replay(tmp_path),
    "heads-file": lambda tmp_path, cleanup: heads_file(tmp_path),
    "websocket": websocket,
    "broker": native_broker,
}


@pytest.fixture(params=sorted(FACTORIES))
def made(request, tmp_path: Path, cleanup: list) -> Made:
    return FACTORIES[request.param](tmp_path, cleanup)


def batch_items(source: Source, max_items: int, timeout: float) -> list[SourceItem]:
    """`read_batch` as a `read`: its rows as PayloadHeads, then its rejected events."""
    batch = source.read_batch(max_items, timeout)
    assert batch.heads.schema == batch_schema("payload_head").arrow
    return [PayloadHead.from_dict(row) for row in batch.heads.to_pylist()] + batch.rejected


def plain_items(source: Source, max_items: int, timeout: float) -> list[SourceItem]:
    return source.read(max_items, timeout)


def read_all(made: Made, max_items: int, timeout: float = 30.0,
             read: Callable[[Source, int, float], list[SourceItem]] = plain_items
             ) -> list[SourceItem]:
    """Read until the expected items arrived (live) or EndOfSource (finite)."""
    items: list[SourceItem] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            batch = read(made.source, max_items, 0.5)
        except EndOfSource:
            assert made.finite, "a live source never ends by itself"
            return items
        assert len(batch) <= max_items, f"read({max_items}) returned {len(batch)} items"
        items += batch
        if not made.finite and len(items) >= made.expected:
            return items
    raise AssertionError(f"only {len(items)} of {made.expected} items within {timeout} s")


def test_max_items_bounds_every_read_and_everything_arrives(made: Made) -> None:
    items = read_all(made, max_items=3)
    assert len(items) == made.expected
    assert all(isinstance(item, PayloadHead) for item in items)
    assert len({item.uid for item in items}) == made.expected


def test_read_batch_gives_the_same_heads_in_columns_within_the_same_bound(made: Made) -> None:
    """What the collector calls: `read`'s heads as one table of the heads topic's schema."""
    items = read_all(made, max_items=3, read=batch_items)
    assert len(items) == made.expected
    assert all(isinstance(item, PayloadHead) and item.validate() for item in items)
    assert len({item.uid for item in items}) == made.expected


def test_exhausted_source_ends_or_returns_empty_within_the_timeout(made: Made) -> None:
    read_all(made, max_items=1000)
    started = time.monotonic()
    if made.finite:
        for _ in range(2):  # and keeps saying so
            with pytest.raises(EndOfSource):
                made.source.read(10, 0.2)
    else:
        assert made.source.read(10, 0.2) == []
    assert time.monotonic() - started < 0.4 + SLACK


def test_close_twice_is_safe(made: Made) -> None:
    made.source.close()
    made.source.close()


def test_reading_after_close_ends_the_source(made: Made) -> None:
    made.source.close()
    started = time.monotonic()
    with pytest.raises(EndOfSource):
        for _ in range(made.expected + 1):  # items received before close may still come out
            made.source.read(1000, 0.2)
    assert time.monotonic() - started < 0.2 * (made.expected + 1) + SLACK
