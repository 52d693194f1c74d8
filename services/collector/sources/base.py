"""The collector's source seam: where PayloadHeads come from.

Implementations, one file each beside this one: `replay.py` (pcap/pcapng captures),
`headsfile.py` (Avro heads files), `websocket.py` (Zeek's WebSocket API, JSON v1) and `broker.py`
(Broker's native Python bindings).
The collector loop above only ever calls `read` and `close`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from headbits.common.records import PayloadHead


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event a source received but could not turn into a PayloadHead.

    It is never dropped: the collector counts it and writes `raw` with `reason` to the
    dead-letter topic. `origin` says where it came from (source, peer, message number).
    """

    raw: bytes
    reason: str
    origin: str


SourceItem = PayloadHead | Rejected


class EndOfSource(Exception):
    """A finite source (a capture file) has nothing more to give."""


class Source(ABC):
    """Pull-based: the collector asks for more only when its producer has room.

    `read(max_items, timeout)` returns up to `max_items` items, waiting at most `timeout`
    seconds, possibly an empty list; it raises `EndOfSource` once a finite source is exhausted.
    A source that buffers internally (a socket reader thread) bounds its buffer and stops reading
    from its peer when full, so a stalled Kafka slows the sensor link instead of growing memory.
    `close()` stops background work and releases sockets; it is safe to call twice.
    """

    @abstractmethod
    def read(self, max_items: int, timeout: float) -> list[SourceItem]: ...

    @abstractmethod
    def close(self) -> None: ...
