"""Source: Zeek's WebSocket API (JSON v1 at `/v1/messages/json`), the default sensor link.

A reader thread owns the socket: it connects, sends the topic array, waits for the `ack`, then
turns every text frame into a PayloadHead or a Rejected and hands them over in batches through a
bounded queue. When the queue is full the thread stops reading the socket, so a stalled Kafka
fills TCP windows instead of memory. Zeek does not push back on a WebSocket subscriber: when its
send buffer for the client is full it drops events or closes the connection (zeek/README.md says
what each version does), so every disconnect is told: the close code and reason Zeek sent (or
that the connection just ended) are logged, counted in `counts` and, given a Prometheus
registry, in `headbits_zeek_link_events_total{source="websocket", event=...}`. The source then
reconnects with exponential backoff. `error` messages from the server are logged and counted.
Frames are read over a plain socket, one `recv` yielding a batch of frames without a task switch
per message. The `websockets` Sans-I/O protocol does the upgrade and every frame out of the
ordinary; `FrameSplitter` takes the single-frame text messages Zeek sends, which is nearly all of
them, straight from the bytes (see its docstring).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Sequence

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PrometheusCounter
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI, WebSocketException
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from headbits.collector.sources.base import Batch, EndOfSource, Rejected, Source, SourceItem
from headbits.collector.sources.handoff import BoundedHandoff
from headbits.collector.zeek_event import (
    DEFAULT_TOPIC,
    EventError,
    decode_event_row,
    read_data_message,
)
from headbits.common.columnar import rows_table
from headbits.common.records import HeadRow, PayloadHead

LOG = logging.getLogger(__name__)

MESSAGES_PATH = "/v1/messages/json"
_RECV_BYTES = 1 << 18

CLOSE_MEANINGS = {
    1000: "normal closure",
    1001: "going away (Zeek is shutting down)",
    1006: "connection lost without a close frame",
    1008: "policy violation",
    1009: "message too big",
    1011: "internal error on the Zeek side",
}
"""RFC 6455 close codes a Zeek WebSocket server may send, and what they mean for a collector."""


def link_events_counter(registry: CollectorRegistry) -> PrometheusCounter:
    """`headbits_zeek_link_events_total{source, event}`: disconnects and status changes of the
    link to Zeek (close codes, Broker status codes), so silent loss at the sensor shows up."""
    return PrometheusCounter(
        "zeek_link_events", "disconnects and status changes of the link to Zeek, by event",
        ["source", "event"], registry=registry, namespace="headbits")


class HandshakeError(ConnectionError):
    """The server refused the WebSocket upgrade or answered the topic array with an error."""


def client_ssl_context(
    ca_file: str | None = None,
    verify: bool = True,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> ssl.SSLContext:
    """TLS settings for `wss://` URLs: CA bundle, optional client certificate."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


class WebSocketSource(Source):
    """PayloadHeads from one Zeek WebSocket server; `sensor` names that Zeek in every head."""

    def __init__(
        self,
        url: str,
        sensor: str,
        *,
        topics: Sequence[str] = (DEFAULT_TOPIC,),
        capacity: int = 50_000,
        ssl_context: ssl.SSLContext | None = None,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        connect_timeout: float = 10.0,
        max_message_bytes: int = 1 << 20,
        registry: CollectorRegistry | None = None,
    ) -> None:
        try:
            self._uri = parse_uri(url)
        except InvalidURI as error:
            raise ValueError(f"WebSocket URL {url!r}: {error}") from None
        if self._uri.path != MESSAGES_PATH:
            LOG.warning("WebSocket URL path %s is not %s", self._uri.path, MESSAGES_PATH)
        self.url = url
        self.sensor = sensor
        self.topics = tuple(topics)
        self._ssl_context = ssl_context or (client_ssl_context() if self._uri.secure else None)
        self._reconnect = (reconnect_initial, reconnect_max)
        self._connect_timeout = connect_timeout
        self._max_message_bytes = max_message_bytes
        # Heads wait as HeadRows: read_batch transposes them without building an object each.
        self._handoff: BoundedHandoff[HeadRow | Rejected] = BoundedHandoff(capacity)
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self.counts = {"messages": 0, "heads": 0, "rejected": 0, "server_errors": 0,
                       "connections": 0, "lost_on_close": 0, "disconnects": 0}
        self.close_codes: Counter[int] = Counter()
        self._link_events = link_events_counter(registry) if registry is not None else None
        self._thread = threading.Thread(target=self._run, name="websocket-source", daemon=True)
        self._thread.start()

    def read(self, max_items: int, timeout: float) -> list[SourceItem]:
        return [item if isinstance(item, Rejected) else PayloadHead(*item)
                for item in self._take(max_items, timeout)]

    def read_batch(self, max_items: int, timeout: float) -> Batch:
        items = self._take(max_items, timeout)
        rows = [item for item in items if not isinstance(item, Rejected)]
        rejected = [item for item in items if isinstance(item, Rejected)]
        return Batch(rows_table("payload_head", rows), rejected)

    def _take(self, max_items: int, timeout: float) -> list[HeadRow | Rejected]:
        items = self._handoff.take(max_items, timeout)
        if not items and (self._stop.is_set() or not self._thread.is_alive()):
            raise EndOfSource(f"WebSocket source {self.url} is closed")
        return items

    def close(self) -> None:
        self._stop.set()
        self._handoff.close()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        delay = self._reconnect[0]
        while not self._stop.is_set():
            try:
                with self._connect() as sock:
                    self._socket = sock
                    frames = self._handshake(sock)
                    delay = self._reconnect[0]
                    self._stream(sock, frames)
            except (OSError, WebSocketException, HandshakeError) as error:
                if self._stop.is_set():
                    break
                LOG.warning("WebSocket %s: %s; reconnecting in %.1f s", self.url, error, delay)
            except Exception:  # a bug must not end the thread silently: log it, reconnect
                if self._stop.is_set():
                    break
                LOG.exception("WebSocket %s: unexpected error; reconnecting in %.1f s", self.url,
                              delay)
            finally:
                self._socket = None
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self._reconnect[1])

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._uri.host, self._uri.port), self._connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl_context is not None:
            sock = self._ssl_context.wrap_socket(sock, server_hostname=self._uri.host)
        return sock

    def _handshake(self, sock: socket.socket) -> FrameSplitter:
        """Upgrade, send the topic array, wait for the ack; raise with the server's error."""
        protocol = ClientProtocol(self._uri, max_size=self._max_message_bytes)
        protocol.send_request(protocol.connect())
        _flush(sock, protocol)
        frames = FrameSplitter(protocol, self._max_message_bytes, _upgrade(sock, protocol))
        protocol.send_text(orjson.dumps(list(self.topics)))
        _flush(sock, protocol)
        pending: list[tuple[bool, bytes]] = []
        while not pending:
            pending = _receive(sock, frames)
        reply = _json_object(pending[0][1])
        if reply.get("type") == "error":
            self.counts["server_errors"] += 1
            raise HandshakeError(f"server error {reply.get('code')}: {reply.get('context')}")
        if reply.get("type") != "ack":
            raise HandshakeError(f"expected an ack, got {pending[0][1][:200]!r}")
        self.counts["connections"] += 1
        LOG.info("WebSocket %s: subscribed to %s at endpoint %s (version %s)", self.url,
                 list(self.topics), reply.get("endpoint"), reply.get("version"))
        sock.settimeout(0.5)
        self._deliver(pending[1:])
        return frames

    def _stream(self, sock: socket.socket, frames: FrameSplitter) -> None:
        protocol = frames.protocol
        while not self._stop.is_set():
            try:
                messages = _receive(sock, frames)
            except TimeoutError:
                continue
            except ConnectionError:
                if not self._stop.is_set():
                    self._closed_by_server(protocol.close_code, protocol.close_reason)
                raise
            self._deliver(messages)
            _flush(sock, protocol)
            if protocol.close_expected() or protocol.state is State.CLOSED:
                self._closed_by_server(protocol.close_code, protocol.close_reason)
                raise ConnectionError(f"server closed the connection ({protocol.close_code})")

    def _closed_by_server(self, code: int | None, reason: str | None) -> None:
        """Count and log why Zeek ended a subscribed connection (1006: no close frame)."""
        code = code or 1006
        self.counts["disconnects"] += 1
        self.close_codes[code] += 1
        if self._link_events is not None:
            self._link_events.labels("websocket", f"close_{code}").inc()
        LOG.warning("WebSocket %s: Zeek closed the connection: code %d, %s, reason %r; heads "
                    "Zeek published while the collector was away are lost", self.url, code,
                    CLOSE_MEANINGS.get(code, "unknown code"), reason or "")

    def _deliver(self, messages: list[tuple[bool, bytes]]) -> None:
        items: list[HeadRow | Rejected] = []
        sensor = self.sensor
        first = self.counts["messages"] + 1
        for number, (is_text, message) in enumerate(messages, first):
            # The form Zeek writes is read without parsing the JSON; anything else is parsed.
            item = read_data_message(message, sensor) if is_text else self._reject(
                message, "binary frame: JSON v1 carries text frames only",
                f"websocket {self.url} message {number}")
            if item is None:
                item = self._decode(message, number)
            if item is not None:
                items.append(item)
        self.counts["messages"] = first - 1 + len(messages)
        self.counts["heads"] += sum(type(item) is tuple for item in items)
        if items and not self._handoff.put(items):
            self.counts["lost_on_close"] += len(items)

    def _decode(self, message: bytes, number: int) -> HeadRow | Rejected | None:
        """A text message parsed as JSON: a head, a Rejected saying why, or None (an error
        message of the server's, logged and counted)."""
        origin = f"websocket {self.url} message {number}"
        try:
            parsed = orjson.loads(message)
        except orjson.JSONDecodeError as error:
            return self._reject(message, f"not JSON: {error}", origin)
        if not isinstance(parsed, dict):
            return self._reject(message, "message is not a JSON object", origin)
        kind = parsed.get("type")
        if kind == "data-message":
            try:
                return decode_event_row(parsed, self.sensor)
            except EventError as error:
                return self._reject(message, str(error), origin)
        if kind == "error":
            self.counts["server_errors"] += 1
            LOG.error("WebSocket %s: server error %s: %s", self.url, parsed.get("code"),
                      parsed.get("context"))
            return None
        return self._reject(message, f"unexpected message type {kind!r}", origin)

    def _reject(self, message: bytes, reason: str, origin: str) -> Rejected:
        self.counts["rejected"] += 1
        return Rejected(raw=message, reason=reason, origin=origin)


_HEADERS_END = b"\r\n\r\n"
_MAX_RESPONSE_BYTES = 1 << 16


def _upgrade(sock: socket.socket, protocol: ClientProtocol) -> bytes:
    """Read the server's upgrade response into `protocol`; returns the bytes after it (frames).

    Only the response's head goes to the protocol, so that no frame is left half-read in its
    buffer when the splitter takes over. A 101 response has no body; a refusal (which may have
    one) is read by the protocol whole and raised.
    """
    received = b""
    while _HEADERS_END not in received and len(received) < _MAX_RESPONSE_BYTES:
        data = sock.recv(_RECV_BYTES)
        if not data:
            raise ConnectionError("server closed the connection during the upgrade")
        received += data
    end = received.find(_HEADERS_END)
    end = len(received) if end < 0 else end + len(_HEADERS_END)
    protocol.receive_data(received[:end])
    rest = received[end:]
    while not protocol.events_received() and protocol.handshake_exc is None:
        data, rest = rest or sock.recv(_RECV_BYTES), b""  # a refusal's body is still coming
        if not data:
            raise ConnectionError("server closed the connection during the upgrade")
        protocol.receive_data(data)
    if protocol.handshake_exc is not None or protocol.state is not State.OPEN:
        raise HandshakeError(f"upgrade refused: {protocol.handshake_exc}")
    return rest


class FrameSplitter:
    """The server's byte stream cut into messages `(is_text, data)`, in order.

    An unmasked, final text frame without extension bits (how Zeek sends each event) is sliced
    out of the bytes directly: the websockets protocol costs about 2 µs a frame, a third of the
    event's whole decoding. Every other frame (control frames, fragments and whatever follows
    one until its final frame, masked or RSV frames, anything after a close) goes to the
    protocol whole, which answers pings, closes, and fails the connection on what RFC 6455
    forbids. A frame longer than `max_size` goes to it as it arrives: it fails the connection
    with 1009, and the splitter never buffers more than one frame.
    """

    def __init__(self, protocol: ClientProtocol, max_size: int, received: bytes = b"") -> None:
        self.protocol = protocol
        self._max_size = max_size
        self._rest = b""
        self._partial: list[bytes] = []
        self._protocol_only = False
        self._pending: list[tuple[bool, bytes]] = []
        self._pending = self.receive(received) if received else []

    def receive(self, data: bytes) -> list[tuple[bool, bytes]]:
        """The messages completed by `data` (and any received with the upgrade)."""
        messages, self._pending = self._pending, []
        if self._protocol_only:
            self.protocol.receive_data(data)
            return messages + _messages(self.protocol.events_received(), self._partial)
        buffer = self._rest + data if self._rest else data
        position, end = 0, len(buffer)
        while end - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            length, header = second & 0x7F, 2
            if length == 126:
                length, header = int.from_bytes(buffer[position + 2:position + 4], "big"), 4
            elif length == 127:
                length, header = int.from_bytes(buffer[position + 2:position + 10], "big"), 10
            header += 4 if second & 0x80 else 0  # a masking key (which the protocol refuses)
            if length > self._max_size:
                self._protocol_only = True
                self.protocol.receive_data(buffer[position:])
                self._rest = b""
                return messages + _messages(self.protocol.events_received(), self._partial)
            frame_end = position + header + length
            if frame_end > end:
                break
            if first == 0x81 and not second & 0x80 and not self._partial and (
                    self.protocol.state is State.OPEN):
                messages.append((True, buffer[position + header:frame_end]))
            else:
                self.protocol.receive_data(buffer[position:frame_end])
                messages += _messages(self.protocol.events_received(), self._partial)
            position = frame_end
        self._rest = buffer[position:]
        return messages

    def receive_eof(self) -> list[tuple[bool, bytes]]:
        """The end of the stream: a frame cut short is the protocol's to judge."""
        if self._rest:
            self.protocol.receive_data(self._rest)
            self._rest = b""
        self.protocol.receive_eof()
        return _messages(self.protocol.events_received(), self._partial)


def _receive(sock: socket.socket, frames: FrameSplitter) -> list[tuple[bool, bytes]]:
    data = sock.recv(_RECV_BYTES)
    if data:
        return frames.receive(data)
    messages = frames.receive_eof()
    if not messages:
        raise ConnectionError("server closed the connection")
    return messages


def _flush(sock: socket.socket, protocol: ClientProtocol) -> None:
    """Send what the protocol queued: the upgrade request, the topics, pongs, close replies."""
    outgoing = protocol.data_to_send()
    if outgoing:
        sock.sendall(b"".join(outgoing))


def _messages(events: list, partial: list[bytes]) -> list[tuple[bool, bytes]]:
    """Complete (is_text, data) messages among frames; fragments wait in `partial` for the rest.

    Binary messages are returned too (flagged) so that they are rejected, not silently skipped.
    """
    messages = []
    for frame in events:
        starts = frame.opcode in (Opcode.TEXT, Opcode.BINARY)
        if starts or (frame.opcode is Opcode.CONT and partial):
            if starts:
                partial.clear()
                partial.append(b"T" if frame.opcode is Opcode.TEXT else b"B")
            partial.append(frame.data)
            if frame.fin:
                messages.append((partial[0] == b"T", b"".join(partial[1:])))
                partial.clear()
    return messages


def _json_object(message: bytes) -> dict:
    try:
        parsed = orjson.loads(message)
    except orjson.JSONDecodeError as error:
        raise HandshakeError(f"handshake reply is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise HandshakeError(f"handshake reply is not a JSON object: {message[:200]!r}")
    return parsed
