"""The first N payload bytes of each direction of every TCP and UDP connection.

This mirrors what the Zeek script collects, from decoded packets instead of Zeek's reassembler:

* TCP bytes are placed by sequence number. Retransmitted, out-of-order and overlapping segments
  are merged with the first-received byte winning (as Zeek's reassembler does). A head is the
  contiguous prefix from the stream start; it stops at a hole and the gap flag says so. Without
  the SYN the stream starts at the first sequence number seen and the gap flag is set, because
  the head may not be the stream start.
* UDP heads concatenate the first datagrams of a direction up to N; a datagram cut short by the
  capture's snap length ends the head with the gap flag set.
* Only bytes within the first N of a direction are kept, so memory per connection is bounded.
* The originator is the SYN sender; without a SYN the receiver of the SYN-ACK; otherwise (and
  for UDP) the sender of the first packet.
* A SYN after FIN/RST, or a packet after the idle timeout (Zeek's defaults: TCP 5 min, UDP
  1 min), starts a new connection on the same 5-tuple.
* Only connections that carry payload in at least one direction become heads, as in the labelled
  dataset; the others are counted.
* A segment whose source endpoint is its destination (a LAND attack packet) has no responder to
  tell apart from the originator: it is refused with a reason, never made into a connection.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass

from headbits.common.records import MAX_HEAD_BYTES, PayloadHead

TCP_IDLE_TIMEOUT = 300.0
UDP_IDLE_TIMEOUT = 60.0

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

_SEQ_MOD = 1 << 32
_SEQ_HALF = 1 << 31
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_UID_CHARS = 17
_SWEEP_EVERY = 1 << 16
LAND_REASON = "LAND (source endpoint = destination endpoint)"


@dataclass(slots=True)
class Segment:
    """One decoded TCP segment or UDP datagram.

    Addresses are packed (4 or 16 bytes). `payload_len` is the length the IP header claims, which
    exceeds `len(payload)` when the capture's snap length cut the packet. `context` holds outer
    identifiers (VLAN ids) that separate otherwise identical 5-tuples, as Zeek's VLAN-aware
    connection key does.
    """

    ts: float
    transport: str
    src: bytes
    sport: int
    dst: bytes
    dport: int
    payload: bytes
    payload_len: int
    flags: int = 0
    seq: int = 0
    ack: int = 0
    context: tuple[int, ...] = ()


def connection_uid(
    sensor: str,
    transport: str,
    orig: tuple[str, int],
    resp: tuple[str, int],
    ts: float,
    *,
    context: tuple[int, ...] = (),
) -> str:
    """Zeek-like uid ("C" + 17 base62 chars), the same for the same capture on every run."""
    key = f"{sensor}|{transport}|{orig[0]}|{orig[1]}|{resp[0]}|{resp[1]}|{ts:.6f}"
    if context:
        key += "|" + ",".join(map(str, context))
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest(), "big")
    chars = []
    for _ in range(_UID_CHARS):
        value, digit = divmod(value, 62)
        chars.append(_BASE62[digit])
    return "C" + "".join(chars)


def format_address(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


class _TcpDirection:
    """One direction's stream: bytes by offset from the stream start, kept within the first n."""

    __slots__ = ("base", "buffer", "extent", "filled", "fin_offset", "head_len", "seen_end",
                 "started")

    def __init__(self, n: int) -> None:
        self.base: int | None = None
        self.started = False
        self.buffer = bytearray(n)
        self.filled = bytearray(n)
        self.head_len = 0
        self.seen_end = 0
        self.extent = 0
        self.fin_offset: int | None = None

    def offset(self, seq: int) -> int:
        """Stream offset of `seq`, negative before the start (sequence numbers wrap at 2**32)."""
        delta = (seq - self.base) % _SEQ_MOD
        return delta - _SEQ_MOD if delta >= _SEQ_HALF else delta

    def add(self, seq: int, syn: bool, payload: bytes, payload_len: int) -> None:
        if self.base is None:
            if not syn and not payload_len:
                return  # a bare ACK or keep-alive says nothing reliable about the start
            self.base = (seq + 1) % _SEQ_MOD if syn else seq
            self.started = syn
        start = self.offset((seq + 1) % _SEQ_MOD if syn else seq)
        end = start + payload_len
        if payload_len:
            self.seen_end = max(self.seen_end, end)
            self.extent = max(self.extent, end)
        n = len(self.buffer)
        if self.head_len == n or not payload or start >= n or start + len(payload) <= 0:
            return
        if start < 0:
            payload = payload[-start:]
            start = 0
        self._write(start, payload[: n - start])

    def _write(self, start: int, data: bytes) -> None:
        """Fill only the unfilled bytes of [start, start+len): the first-received byte wins."""
        end = start + len(data)
        filled = self.filled
        position = start
        while position < end:
            hole = filled.find(0, position, end)
            if hole < 0:
                break
            hole_end = filled.find(1, hole, end)
            if hole_end < 0:
                hole_end = end
            self.buffer[hole:hole_end] = data[hole - start : hole_end - start]
            filled[hole:hole_end] = b"\x01" * (hole_end - hole)
            position = hole_end
        if start <= self.head_len:
            prefix_end = filled.find(0, self.head_len)
            self.head_len = len(filled) if prefix_end < 0 else prefix_end

    def known_end(self, seq: int) -> None:
        """The peer's ACK proves the stream reached `seq`, seen or not. A FIN takes one
        sequence number but carries no byte, so an ACK of the FIN proves no more data."""
        if self.base is not None:
            acked = self.offset(seq)
            if self.fin_offset is not None:
                acked = min(acked, self.fin_offset)
            self.extent = max(self.extent, acked)

    def fin(self, seq: int) -> None:
        """The stream ends at `seq` (the FIN's own sequence number): its data reached there."""
        if self.base is not None:
            self.fin_offset = self.offset(seq)
            self.extent = max(self.extent, self.fin_offset)

    def head(self) -> bytes:
        return bytes(self.buffer[: self.head_len])

    def gap(self) -> bool:
        if self.base is None:
            return False
        return not self.started or (
            self.head_len < len(self.buffer) and self.extent > self.head_len
        )

    def bytes_seen(self) -> int:
        return max(self.seen_end, self.head_len)


class _UdpDirection:
    __slots__ = ("head_buffer", "n", "seen", "truncated")

    def __init__(self, n: int) -> None:
        self.n = n
        self.head_buffer = bytearray()
        self.seen = 0
        self.truncated = False

    def add(self, payload: bytes, payload_len: int) -> None:
        self.seen += payload_len
        room = self.n - len(self.head_buffer)
        if room <= 0 or self.truncated:
            return
        self.head_buffer += payload[:room]
        if len(payload) < payload_len and len(payload) < room:
            self.truncated = True

    def head(self) -> bytes:
        return bytes(self.head_buffer)

    def gap(self) -> bool:
        return self.truncated

    def bytes_seen(self) -> int:
        return self.seen


class _Connection:
    __slots__ = (
        "closed",
        "context",
        "directions",
        "first",
        "first_ts",
        "index",
        "last_ts",
        "syn_from",
        "synack_to",
        "transport",
    )

    def __init__(self, segment: Segment, index: int, n: int) -> None:
        src, dst = (segment.src, segment.sport), (segment.dst, segment.dport)
        self.index = index
        self.transport = segment.transport
        self.context = segment.context
        self.first = src
        self.first_ts = segment.ts
        self.last_ts = segment.ts
        self.closed = False
        self.syn_from: tuple[bytes, int] | None = None
        self.synack_to: tuple[bytes, int] | None = None
        kind = _TcpDirection if segment.transport == "tcp" else _UdpDirection
        self.directions = {src: kind(n), dst: kind(n)}

    def originator(self) -> tuple[bytes, int]:
        return self.syn_from or self.synack_to or self.first

    def has_payload(self) -> bool:
        return any(direction.bytes_seen() for direction in self.directions.values())

    def to_head(self, sensor: str) -> PayloadHead:
        orig = self.originator()
        (resp,) = (endpoint for endpoint in self.directions if endpoint != orig)
        orig_dir, resp_dir = self.directions[orig], self.directions[resp]
        orig_text = (format_address(orig[0]), orig[1])
        resp_text = (format_address(resp[0]), resp[1])
        return PayloadHead(
            uid=connection_uid(
                sensor, self.transport, orig_text, resp_text, self.first_ts, context=self.context
            ),
            ts=self.first_ts,
            sensor=sensor,
            orig_h=orig_text[0],
            orig_p=orig_text[1],
            resp_h=resp_text[0],
            resp_p=resp_text[1],
            transport=self.transport,
            services=(),
            orig_head=orig_dir.head(),
            resp_head=resp_dir.head(),
            orig_bytes_seen=orig_dir.bytes_seen(),
            resp_bytes_seen=resp_dir.bytes_seen(),
            orig_gap=orig_dir.gap(),
            resp_gap=resp_dir.gap(),
        )


class ConnectionTable:
    """Feed segments in capture order with `add`, then collect heads with `finish`."""

    def __init__(self, n: int = MAX_HEAD_BYTES, sensor: str = "replay") -> None:
        if not 0 < n <= MAX_HEAD_BYTES:
            raise ValueError(f"n={n} is outside 1..{MAX_HEAD_BYTES}")
        self.n = n
        self.sensor = sensor
        self.connections_without_payload = 0
        self._open: dict[tuple, _Connection] = {}
        self._ended: list[_Connection] = []
        self._created = 0

    def add(self, segment: Segment) -> str | None:
        """Place one segment; returns None, or why it can belong to no connection (the name of
        a skip counter, e.g. `LAND_REASON`)."""
        src, dst = (segment.src, segment.sport), (segment.dst, segment.dport)
        if src == dst:
            return LAND_REASON
        pair = (src, dst) if src <= dst else (dst, src)
        key = (segment.transport, segment.context, pair)
        connection = self._open.get(key)
        if connection is not None and self._starts_new(connection, segment):
            self._end(connection)
            connection = None
        if connection is None:
            connection = _Connection(segment, self._created, self.n)
            self._created += 1
            self._open[key] = connection
            if self._created % _SWEEP_EVERY == 0:
                self._sweep_idle(segment.ts)
        connection.last_ts = segment.ts
        if segment.transport == "udp":
            connection.directions[src].add(segment.payload, segment.payload_len)
        else:
            self._add_tcp(connection, src, dst, segment)
        return None

    def _add_tcp(
        self, connection: _Connection, src: tuple, dst: tuple, segment: Segment
    ) -> None:
        flags = segment.flags
        syn = bool(flags & TCP_SYN)
        if syn and not flags & TCP_ACK and connection.syn_from is None:
            connection.syn_from = src
        elif syn and flags & TCP_ACK and connection.synack_to is None:
            connection.synack_to = dst
        sender = connection.directions[src]
        sender.add(segment.seq, syn, segment.payload, segment.payload_len)
        if flags & TCP_FIN:
            sender.fin((segment.seq + int(syn) + segment.payload_len) % _SEQ_MOD)
        if flags & TCP_ACK and not flags & TCP_RST:
            connection.directions[dst].known_end(segment.ack)
        if flags & (TCP_FIN | TCP_RST):
            connection.closed = True

    @staticmethod
    def _starts_new(connection: _Connection, segment: Segment) -> bool:
        timeout = TCP_IDLE_TIMEOUT if segment.transport == "tcp" else UDP_IDLE_TIMEOUT
        if segment.ts - connection.last_ts > timeout:
            return True
        pure_syn = segment.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        return segment.transport == "tcp" and pure_syn and connection.closed

    def _end(self, connection: _Connection) -> None:
        if connection.has_payload():
            self._ended.append(connection)
        else:
            self.connections_without_payload += 1

    def _sweep_idle(self, now: float) -> None:
        """Retire connections idle past their timeout, so a long capture's table stays small."""
        for key, connection in list(self._open.items()):
            timeout = TCP_IDLE_TIMEOUT if connection.transport == "tcp" else UDP_IDLE_TIMEOUT
            if now - connection.last_ts > timeout:
                del self._open[key]
                self._end(connection)

    def finish(self) -> list[PayloadHead]:
        """Heads of all connections with payload, in connection start order; empties the table."""
        for connection in self._open.values():
            self._end(connection)
        self._open.clear()
        ended, self._ended = self._ended, []
        ended.sort(key=lambda connection: connection.index)
        return [connection.to_head(self.sensor) for connection in ended]
