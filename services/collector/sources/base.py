"""The collector's source seam: where PayloadHeads come from.

Implementations, one file each beside this one: `replay.py` (pcap/pcapng captures),
`headsfile.py` (Avro heads files), `websocket.py` (Zeek's WebSocket API, JSON v1) and `broker.py`
(Broker's native Python bindings).
The collector loop above only ever calls `read_batch` and `close`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import pyarrow as pa

from headbits.common.columnar import rows_table
from headbits.common.records import InvalidRecord, PayloadHead


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


@dataclass(frozen=True, slots=True)
class Batch:
    """One `read_batch`: the valid heads as a table of the `payload_head` batch schema (the
    heads topic's `.v2` columns), and every event or head that was rejected, with why."""

    heads: pa.Table
    rejected: list[Rejected]


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

    def read_batch(self, max_items: int, timeout: float) -> Batch:
        """`read` as the collector takes it, the heads already in columns (same bound, same
        waiting, same EndOfSource). This default validates `read`'s PayloadHeads (one that breaks
        the contract is rejected, with the reason) and transposes them; a source that decodes
        events straight into rows overrides it and never builds the objects."""
        rows, rejected = [], []
        for item in self.read(max_items, timeout):
            if isinstance(item, Rejected):
                rejected.append(item)
                continue
            try:
                rows.append(item.validate().row())
            except InvalidRecord as error:
                rejected.append(Rejected(repr(item).encode(), f"invalid PayloadHead: {error}",
                                         item.uid))
        return Batch(rows_table("payload_head", rows), rejected)
