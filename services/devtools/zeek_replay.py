"""Serve or publish the PayloadHeads of captures as the Zeek package would, without Zeek.

--to websocket  a WebSocket server speaking Zeek's JSON v1 protocol at /v1/messages/json: each
                client sends its topic array, gets an ack, then receives every head as a
                HeadBits::payload_head data message (one shared cursor: a client that
                reconnects continues where the previous one stopped).
--to broker     a Broker endpoint that listens like Zeek's `Broker::listen` and publishes every
                head once a collector has peered.
--to kafka      hands the inputs to the collector service (`headbits collector --source replay`
                or `heads-file`), which produces them to headbits.heads.v2; Kafka settings come
                from HEADBITS_* environment variables, as for `headbits collector`.

Inputs are pcap/pcapng captures (reassembled by headbits.collector.pcap exactly as the Zeek
script collects them) or Avro files of heads (`*.avro`). The WebSocket server here is a test
and demo harness, not Zeek: it speaks the documented protocol, nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from headbits.collector.zeek_event import DEFAULT_TOPIC, encode_data_message, encode_event
from headbits.common.records import MAX_HEAD_BYTES, PayloadHead
from headbits.common.settings import add_settings_arguments, setting, settings_from_args

LOG = logging.getLogger(__name__)

MESSAGES_PATH = "/v1/messages/json"
SERVER_VERSION = "headbits-replay"
_BATCH = 512


@dataclass(frozen=True)
class ReplaySettings:
    to: str = setting("websocket", "websocket (serve JSON v1), broker (publish natively) or kafka")
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(27759, "port to listen on (0: any free port, printed on start)")
    topic: str = setting(DEFAULT_TOPIC, "topic of the HeadBits::payload_head events")
    head_bytes: int = setting(MAX_HEAD_BYTES, "N: bytes collected per direction")
    sensor: str = setting("", "sensor name put in the heads (default: each capture's stem)")
    broker_tls: bool = setting(False, "use TLS on the Broker listener (Zeek's default is on)")


def load_heads(paths: Iterable[Path], n: int = MAX_HEAD_BYTES, sensor: str = "") -> Iterator[
    PayloadHead
]:
    """Heads of each input in order; capture errors are logged with the file and offset."""
    from headbits.collector.pcap import read_capture
    from headbits.common.avro import read_heads_file

    for path in paths:
        if path.suffix == ".avro":
            yield from read_heads_file(path)
            continue
        result = read_capture(path, n=n, sensor=sensor or None)
        for error in result.errors:
            LOG.error("%s", error)
        yield from result.heads


class WebSocketReplayServer:
    """JSON v1 server: ack, then the queued `(topic, message text)` pairs to matching clients.

    `messages` are sent in order through one shared cursor. A message whose topic is None is
    sent to every client (used for `error` messages). `handshake_error`, when set, is sent
    instead of the ack and the connection is closed, as Zeek does when it rejects a client.
    `disconnect_after` closes each connection after that many messages (reconnect tests).
    """

    def __init__(
        self,
        messages: Sequence[tuple[str | None, bytes]],
        *,
        endpoint_id: str | None = None,
        version: str = SERVER_VERSION,
        handshake_error: bytes | None = None,
        disconnect_after: int | None = None,
    ) -> None:
        self.messages = messages
        self.cursor = 0
        self.ack = orjson.dumps({"type": "ack", "endpoint": endpoint_id or str(uuid.uuid4()),
                                 "version": version})
        self.handshake_error = handshake_error
        self.disconnect_after = disconnect_after
        self.clients = 0
        self.subscriptions: list[list[str]] = []

    async def serve(self, host: str, port: int, ssl=None) -> asyncio.Server:
        return await asyncio.start_server(self._client, host, port, ssl=ssl)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = ServerProtocol(max_size=1 << 20)
        try:
            request = await _next_event(reader, protocol)
            if request is None:
                return
            if request.path != MESSAGES_PATH:
                protocol.send_response(protocol.reject(404, f"only {MESSAGES_PATH}\n"))
                await _send(writer, protocol)
                return
            protocol.send_response(protocol.accept(request))
            await _send(writer, protocol)
            self.clients += 1
            topics = await self._subscriptions(reader, writer, protocol)
            if topics is None:
                return
            await self._stream(reader, writer, protocol, topics)
        except (ConnectionError, asyncio.IncompleteReadError):
            LOG.info("replay client went away")
        finally:
            writer.close()

    async def _subscriptions(self, reader, writer, protocol) -> list[str] | None:
        frame = await _next_event(reader, protocol)
        topics = _topic_array(frame.data if frame is not None else b"")
        if topics is None or self.handshake_error is not None:
            error = self.handshake_error or orjson.dumps({
                "type": "error", "code": "deserialization_failed",
                "context": "first message must be a JSON array of topic strings"})
            protocol.send_text(error)
            protocol.send_close(1000)
            await _send(writer, protocol)
            return None
        self.subscriptions.append(topics)
        protocol.send_text(self.ack)
        await _send(writer, protocol)
        return topics

    async def _stream(self, reader, writer, protocol, topics: list[str]) -> None:
        sent = 0
        pending_read = asyncio.ensure_future(reader.read(65536))
        while self.cursor < len(self.messages):
            if self.disconnect_after is not None and sent >= self.disconnect_after:
                break
            batch_end = min(len(self.messages), self.cursor + _BATCH)
            if self.disconnect_after is not None:
                batch_end = min(batch_end, self.cursor + self.disconnect_after - sent)
            for topic, text in self.messages[self.cursor:batch_end]:
                if topic is None or any(topic.startswith(prefix) for prefix in topics):
                    protocol.send_text(text)
            sent += batch_end - self.cursor
            self.cursor = batch_end
            await _send(writer, protocol)
            if pending_read.done():
                data = pending_read.result()
                if not data:
                    return
                protocol.receive_data(data)
                await _send(writer, protocol)
                pending_read = asyncio.ensure_future(reader.read(65536))
        if self.disconnect_after is not None and self.cursor < len(self.messages):
            pending_read.cancel()
            return
        while protocol.state is not State.CLOSED:
            data = await pending_read
            if not data:
                break
            protocol.receive_data(data)
            await _send(writer, protocol)
            pending_read = asyncio.ensure_future(reader.read(65536))


async def _next_event(reader: asyncio.StreamReader, protocol: ServerProtocol):
    """The next handshake request or complete text frame, or None at end of stream."""
    while True:
        for event in protocol.events_received():
            if getattr(event, "opcode", Opcode.TEXT) is Opcode.TEXT:
                return event
        data = await reader.read(65536)
        if not data:
            return None
        protocol.receive_data(data)


async def _send(writer: asyncio.StreamWriter, protocol: ServerProtocol) -> None:
    outgoing = protocol.data_to_send()
    if outgoing:
        writer.write(b"".join(outgoing))
        await writer.drain()


def _topic_array(text: bytes) -> list[str] | None:
    try:
        topics = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        return None
    return topics


def data_messages(heads: Iterable[PayloadHead], topic: str) -> list[tuple[str, bytes]]:
    return [(topic, encode_data_message(head, topic)) for head in heads]


async def serve_websocket(heads: list[PayloadHead], settings: ReplaySettings) -> None:
    server = WebSocketReplayServer(data_messages(heads, settings.topic))
    listener = await server.serve(settings.host, settings.port)
    port = listener.sockets[0].getsockname()[1]
    print(f"serving {len(heads)} heads at ws://{settings.host}:{port}{MESSAGES_PATH} "
          f"on topic {settings.topic}", flush=True)
    async with listener:
        await listener.serve_forever()


def publish_broker(heads: list[PayloadHead], settings: ReplaySettings) -> int:
    """Listen like Zeek's Broker::listen, wait for a peer, publish every head, then linger."""
    import broker

    from headbits.collector.sources.broker import BrokerTLS, from_typed, make_endpoint

    endpoint = make_endpoint(BrokerTLS(disable=not settings.broker_tls))
    port = endpoint.listen(settings.host, settings.port)
    print(f"Broker endpoint listening on {settings.host}:{port}; waiting for a peer", flush=True)
    # Broker forwards only to peers whose subscriptions it already knows.
    while not any(settings.topic.startswith(str(t)) or str(t).startswith(settings.topic)
                  for t in endpoint.peer_subscriptions()):
        time.sleep(0.2)
    events = [broker.Data(from_typed(encode_event(head))) for head in heads]
    for event in events:
        endpoint.publish(settings.topic, event)
    print(f"published {len(events)} heads on topic {settings.topic}", flush=True)
    while endpoint.peers():
        time.sleep(0.5)
    endpoint.shutdown()
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="CAPTURE",
                        help="pcap/pcapng captures or Avro files of heads (*.avro)")
    add_settings_arguments(parser, ReplaySettings)


def to_kafka(inputs: list[Path], settings: ReplaySettings) -> int:
    """Run the collector service over the inputs (all captures, or all Avro heads files)."""
    from headbits.cli import main as cli_main

    heads_files = [str(path) for path in inputs if path.suffix == ".avro"]
    if heads_files and len(heads_files) != len(inputs):
        print("headbits replay: --to kafka takes captures or Avro heads files, not both",
              file=sys.stderr)
        return 2
    source = ["--source", "heads-file", "--heads-files", ",".join(heads_files)] if heads_files \
        else ["--source", "replay", "--captures", ",".join(str(path) for path in inputs)]
    options = [*source, *(["--sensor", settings.sensor] if settings.sensor else [])]
    return cli_main(["collector", *options])


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(ReplaySettings, args)
    if settings.to == "kafka":
        return to_kafka(list(args.inputs), settings)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    heads = list(load_heads(args.inputs, settings.head_bytes, settings.sensor))
    if settings.to == "websocket":
        asyncio.run(serve_websocket(heads, settings))
        return 0
    if settings.to == "broker":
        return publish_broker(heads, settings)
    print(f"headbits replay: --to {settings.to!r} is not websocket, broker or kafka",
          file=sys.stderr)
    return 2
