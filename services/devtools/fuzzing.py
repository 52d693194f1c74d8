"""Fuzz targets: every decoder that takes bytes from outside, with inputs hypothesis generates.

Development only (tests/test_fuzz.py runs a few hundred cases per decoder, `bench/fuzz.py` tens
of thousands). Each `Decoder` pairs a hypothesis strategy (random bytes, and real or well-formed
inputs mutated, truncated and extended) with `run`, which feeds one input to the production
decoder and says "accepted" or "rejected". The contract checked is the project's bad-input rule:
a decoder either accepts (and what it yields is valid) or rejects with its documented error and a
reason; any other exception is a crash. A rejected Kafka value must also be dead-letterable: its
dead letter (raw bytes + reason) is encoded with the dead-letter schema.
"""

from __future__ import annotations

import datetime
import functools
import os
import socket
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headbits.collector.pcap import read_capture
from headbits.collector.reassembly import (
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    ConnectionTable,
    Segment,
)
from headbits.collector.zeek_event import (
    EventError,
    decode_event,
    encode_data_message,
    read_data_message,
)
from headbits.common.avro import DecodeError, ValueCodec, load_schema
from headbits.common.records import PayloadHead

ACCEPTED = "accepted"
REJECTED = "rejected"
SEED_CAPTURES = ("ndpi/bt-http.pcapng", "suricata-verify/smtp-no-helo-quit/input.pcap",
                 "suricata-verify/krb5-probing/krb.pcap",
                 "suricata-verify/tcp-urgp-01-oob/tcp-urgent1.pcap")
AVRO_SCHEMAS = ("payload_head", "features", "alert", "score", "deadletter")


@dataclass(frozen=True)
class Decoder:
    """One fuzz target: `inputs` makes the strategy, `run` decodes one input."""

    name: str
    inputs: Callable[[], st.SearchStrategy]
    run: Callable[[Any], str]
    dead_letters: bool = False
    """Rejections of this decoder become dead letters (Kafka values, collector source events)."""


@dataclass
class Outcome:
    """Counts of one decoder's fuzz run; `crashes` holds (exception, input) of the first few."""

    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    crashes: list[tuple[str, str]] = field(default_factory=list)
    crash_count: int = 0


def mutated(seed: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Seed bytes with random byte overwrites, a truncation or an extension."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(seed))
        for _ in range(draw(st.integers(0, 8))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        cut = draw(st.one_of(st.none(), st.integers(0, max(len(data), 1))))
        if cut is not None:
            del data[cut:]
        return bytes(data) + draw(st.binary(max_size=16))

    return mutate()


# -- pcap / pcapng and reassembly --------------------------------------------------------------

def _crafted_captures() -> list[bytes]:
    """Small captures made here: a conversation, a LAND packet, degenerate IPv4/IPv6/UDP."""
    def ip4(src: str, dst: str, transport: dpkt.Packet) -> dpkt.ip.IP:
        proto = 6 if isinstance(transport, dpkt.tcp.TCP) else 17
        packet = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto,
                            data=transport)
        packet.len = len(bytes(packet))
        return packet

    packets = [
        ip4("10.0.0.1", "10.0.0.2", dpkt.tcp.TCP(sport=4000, dport=80, flags=TCP_SYN, seq=7)),
        ip4("10.0.0.2", "10.0.0.1", dpkt.tcp.TCP(sport=80, dport=4000, flags=TCP_SYN | TCP_ACK,
                                                 seq=99, ack=8)),
        ip4("10.0.0.1", "10.0.0.2", dpkt.tcp.TCP(sport=4000, dport=80, flags=TCP_ACK, seq=8,
                                                 ack=100, data=b"GET / HTTP/1.1\r\n\r\n")),
        ip4("10.0.0.1", "10.0.0.1", dpkt.tcp.TCP(sport=80, dport=80, flags=TCP_SYN, data=b"x")),
        ip4("10.0.0.3", "10.0.0.4", dpkt.udp.UDP(sport=53, dport=53, data=b"\x00" * 12)),
        ip4("10.0.0.3", "10.0.0.3", dpkt.udp.UDP(sport=0, dport=0, data=b"")),
    ]
    frames = [bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=p))
              for p in packets]
    ip6 = dpkt.ip6.IP6(src=bytes(15) + b"\x01", dst=bytes(15) + b"\x01", nxt=6, hlim=64,
                       data=dpkt.tcp.TCP(sport=1, dport=1, flags=TCP_SYN | TCP_FIN | TCP_RST))
    ip6.plen = len(bytes(ip6.data))
    frames.append(bytes(dpkt.ethernet.Ethernet(type=0x86DD, data=ip6)))
    captures = []
    for writer_class in (dpkt.pcap.Writer, dpkt.pcapng.Writer):
        path = _scratch_file()
        with path.open("wb") as out:
            writer = writer_class(out)
            for number, frame in enumerate(frames):
                writer.writepkt(frame, ts=1.0 + number)
        captures.append(path.read_bytes())
    return captures


@functools.cache
def _scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="headbits-fuzz-"))


def _scratch_file() -> Path:
    return _scratch_dir() / f"case-{os.getpid()}.bin"


@functools.cache
def capture_seeds(corpus: Path | None) -> tuple[bytes, ...]:
    """Real captures of the shared corpus (where present) and the crafted ones."""
    seeds = list(_crafted_captures())
    if corpus is not None:
        seeds += [(corpus / name).read_bytes() for name in SEED_CAPTURES
                  if (corpus / name).is_file()]
    return tuple(seeds)


def _read_capture_bytes(data: bytes) -> str:
    path = _scratch_file()
    path.write_bytes(data)
    read = read_capture(path, n=64, sensor="fuzz")
    for head in read.heads:
        head.validate()
    return REJECTED if read.errors else ACCEPTED


_ADDRESSES = (socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"),
              bytes(15) + b"\x01")


def _segments() -> st.SearchStrategy[list[Segment]]:
    endpoint = st.tuples(st.sampled_from(_ADDRESSES), st.sampled_from((0, 80, 40000, 65535)))

    @st.composite
    def segment(draw: st.DrawFn) -> Segment:
        (src, sport), (dst, dport) = draw(endpoint), draw(endpoint)
        payload = draw(st.binary(max_size=80))
        return Segment(
            ts=draw(st.floats(0, 1000, allow_nan=False)), transport=draw(st.sampled_from(
                ("tcp", "udp"))), src=src, sport=sport, dst=dst, dport=dport, payload=payload,
            payload_len=len(payload) + draw(st.integers(0, 100)),
            flags=draw(st.integers(0, 255)), seq=draw(st.integers(0, 2**32 - 1)),
            ack=draw(st.integers(0, 2**32 - 1)), context=draw(st.sampled_from(((), (7,)))),
        )

    return st.lists(segment(), max_size=30)


def _reassemble(segments: list[Segment]) -> str:
    table = ConnectionTable(n=64, sensor="fuzz")
    refused = [table.add(segment) for segment in segments]
    for head in table.finish():
        head.validate()
    return REJECTED if any(refused) else ACCEPTED


# -- Zeek WebSocket JSON -----------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)


def _heads() -> st.SearchStrategy[PayloadHead]:
    return st.builds(
        PayloadHead, uid=st.text("CAZaz09", min_size=1, max_size=18),
        ts=st.floats(0, 2e9, allow_nan=False), sensor=st.just("zeek"),
        orig_h=st.sampled_from(("10.0.0.1", "2001:db8::1")), orig_p=st.integers(0, 65535),
        resp_h=st.sampled_from(("10.0.0.2", "2001:db8::2")), resp_p=st.integers(0, 65535),
        transport=st.sampled_from(("tcp", "udp")),
        services=st.lists(st.sampled_from(("ssl", "http", "dns")), max_size=2, unique=True)
        .map(lambda s: tuple(sorted(s))),
        orig_head=st.binary(max_size=64), resp_head=st.binary(max_size=64),
        orig_bytes_seen=st.integers(64, 10**6), resp_bytes_seen=st.integers(64, 10**6),
        orig_gap=st.booleans(), resp_gap=st.booleans(),
    )


@st.composite
def mutated_data_message(draw: st.DrawFn) -> bytes:
    """A valid data message with one value anywhere in it replaced by random JSON."""
    message = orjson.loads(encode_data_message(draw(_heads())))
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in list(items):
            slots.append((node, key))
            if isinstance(child, dict | list):
                walk(child)

    walk(message)
    for _ in range(draw(st.integers(1, 3))):
        container, key = draw(st.sampled_from(slots))
        container[key] = draw(_json)
    return orjson.dumps(message)


def _websocket_message(message: bytes) -> str:
    """What the WebSocket source does with one text frame (see `WebSocketSource._deliver`):
    the expression's reading first, then JSON."""
    row = read_data_message(message, "fuzz")
    if row is not None:
        PayloadHead(*row).validate()
        return ACCEPTED
    try:
        parsed = orjson.loads(message)
    except orjson.JSONDecodeError:
        return REJECTED
    if not isinstance(parsed, dict) or parsed.get("type") != "data-message":
        return REJECTED
    try:
        decode_event(parsed, "fuzz").validate()
    except EventError as error:
        assert str(error), "an EventError without a reason"
        return REJECTED
    return ACCEPTED


# -- Broker values (the native source) ----------------------------------------------------------

def _typed(kind: str, data: Any) -> dict:
    return {"@data-type": kind, "data": data}


_broker_hashable = st.one_of(
    st.just(_typed("none", {})), st.booleans().map(lambda v: _typed("boolean", v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: _typed("integer", v)),
    st.floats(allow_nan=False).map(lambda v: _typed("real", v)),
    st.text(max_size=30).map(lambda v: _typed("string", v)),
    st.from_regex(r"[a-z][a-z_:]{0,12}", fullmatch=True).map(lambda v: _typed("enum-value", v)),
    st.ip_addresses().map(lambda v: _typed("address", str(v))),
    st.ip_addresses(v=4).map(lambda v: _typed("subnet", f"{v}/24")),
    st.tuples(st.integers(0, 65535), st.sampled_from(("tcp", "udp", "icmp", "?"))).map(
        lambda v: _typed("port", f"{v[0]}/{v[1]}")),
    st.integers(-(10**15), 10**15).map(lambda v: _typed("timespan", f"{v}ns")),
    st.integers(0, 4 * 10**9).map(lambda v: _typed("timestamp", datetime.datetime.fromtimestamp(
        v, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000"))),
)
_broker_scalar = _broker_hashable | st.integers(0, 2**64 - 1).map(lambda v: _typed("count", v))
# Set members and table keys are built as Python set members and dict keys, the bindings'
# input: the bindings' Count is unhashable and a list is too, so those hold neither.
_broker_value = st.recursive(
    _broker_scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=5).map(lambda v: _typed("vector", v)),
        st.lists(_broker_hashable, max_size=4).map(lambda v: _typed("set", v)),
        st.lists(st.tuples(_broker_hashable, children), max_size=3).map(
            lambda v: _typed("table", [{"key": k, "value": x} for k, x in v])),
    ),
    max_leaves=12,
)


@st.composite
def _mutated_event(draw: st.DrawFn) -> dict:
    """The event a valid head makes, with one to three of its typed values (at any depth)
    replaced by random Broker values."""
    from headbits.collector.zeek_event import encode_event

    event = encode_event(draw(_heads()))
    slots: list[tuple[list, int]] = []

    def walk(node: dict) -> None:
        if node["@data-type"] == "vector":  # a set's members stay (they must stay hashable)
            for index, child in enumerate(node["data"]):
                slots.append((node["data"], index))
                walk(child)

    walk(event)
    for _ in range(draw(st.integers(1, 3))):
        container, index = draw(st.sampled_from(slots))
        container[index] = draw(_broker_value)
    return event


def _broker_inputs() -> st.SearchStrategy[dict]:
    from headbits.collector.zeek_event import encode_event

    return st.one_of(_broker_value, _mutated_event(), _heads().map(encode_event))


@functools.cache
def _broker_converters() -> dict[int, Any]:
    from headbits.collector.sources.broker import _converters, import_broker

    return _converters(import_broker())


def _broker_message(typed: dict) -> str:
    """What the native Broker source does with one message: the value is built with the real
    bindings (as Zeek's would arrive), converted and decoded by `decode_message`."""
    from headbits.collector.sources.base import Rejected
    from headbits.collector.sources.broker import decode_message, from_typed, import_broker

    data = import_broker().Data(from_typed(typed))
    item = decode_message("zeek/headbits/heads", data, _broker_converters(), "fuzz", "fuzz")
    if isinstance(item, Rejected):
        assert item.reason, "a rejection without a reason"
        assert orjson.loads(item.raw)["type"] == "data-message", "raw is not the message"
        return REJECTED
    item.validate()
    return ACCEPTED


def broker_available() -> bool:
    """Broker's Python bindings import (scripts/link-broker.sh links them into the venv)."""
    from headbits.collector.sources.broker import BrokerUnavailableError, import_broker

    try:
        import_broker()
    except BrokerUnavailableError:
        return False
    return True


# -- Avro values of every topic ----------------------------------------------------------------

@functools.cache
def _codec(schema: str) -> ValueCodec:
    return ValueCodec(schema, f"fuzz.{schema}")


@functools.cache
def _avro_seeds(schema: str) -> tuple[bytes, ...]:
    from fastavro.utils import generate_many

    return tuple(_codec(schema).encode(record)
                 for record in generate_many(load_schema(schema), 20))


def _avro_values(schema: str) -> st.SearchStrategy:
    headers = st.one_of(
        st.just(_codec(schema).headers), st.none(),
        st.lists(st.tuples(st.sampled_from(("headbits-schema-fingerprint", "x")),
                           st.binary(max_size=20)), max_size=3),
    )
    values = st.one_of(st.binary(max_size=300), mutated(st.sampled_from(_avro_seeds(schema))),
                       st.sampled_from(_avro_seeds(schema)))
    return st.tuples(values, headers)


def _dead_letter_round_trip(value: bytes | None, error: DecodeError) -> None:
    """A rejected value's dead letter (raw bytes + reason) encodes and decodes."""
    assert str(error), "a DecodeError without a reason"
    letter = {"reason": str(error), "value": value, "key": None, "source_topic": "fuzz",
              "source_partition": 0, "source_offset": 0, "origin": "", "service": "fuzz",
              "ts": 0.0}
    _codec("deadletter").decode(_codec("deadletter").encode(letter), _codec("deadletter").headers)


def _avro_decode(schema: str) -> Callable[[tuple[bytes, Any]], str]:
    def run(case: tuple[bytes, Any]) -> str:
        value, headers = case
        try:
            _codec(schema).decode(value, headers)
        except DecodeError as error:
            _dead_letter_round_trip(value, error)
            return REJECTED
        return ACCEPTED

    return run


# -- Schema-registry answers (a framed value's writer schema) ------------------------------------

class _HostileRegistry:
    """A loopback HTTP server in the Confluent registry's URL layout whose answer to each
    `GET /schemas/ids/<id>` is the fuzz case's (status, body); registration succeeds with id 1.
    Development only: the real registry (tests/test_schema_registry.py) never answers garbage,
    and the point here is what the client and ValueCodec make of an answer that is."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        answers = self.answers = {}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send(200, b'{"id": 1}')

            def do_GET(self) -> None:
                schema_id = self.path.split("?")[0].rsplit("/", 1)[-1]
                self._send(*answers.get(int(schema_id) if schema_id.isdigit() else -1,
                                        (404, b'{"error_code": 40403, "message": "none"}')))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="hostile-registry",
                         daemon=True).start()
        self.next_id = 100

    @functools.cached_property
    def codec(self) -> ValueCodec:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return ValueCodec("payload_head", "fuzz.registry", SchemaRegistryClient({"url": url}))


_HEAD = PayloadHead("CfuzzRegistry1", 1.0, "zeek", "10.0.0.1", 40000, "10.0.0.2", 80, "tcp",
                    ("http",), b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", 16, 17, False,
                    False)


@functools.cache
def _hostile_registry() -> _HostileRegistry:
    return _HostileRegistry()


def _registry_answers() -> st.SearchStrategy[tuple[int, bytes]]:
    """200 and 404 answers: valid, mutated, of another type, not JSON. A 5xx is an outage that
    the services stop on (not bad input), so it is not among them."""
    from fastavro.schema import to_parsing_canonical_form

    canonical = to_parsing_canonical_form(load_schema("payload_head"))
    schema_text = st.one_of(st.just(canonical), mutated(st.just(canonical.encode())).map(
        lambda b: b.decode(errors="replace")), _json.map(lambda v: orjson.dumps(v).decode()))
    document = st.fixed_dictionaries(
        {"schema": schema_text | _json},
        optional={"schemaType": st.sampled_from(("AVRO", "PROTOBUF", "JSON", "")) | _json})
    body = st.one_of(document.map(orjson.dumps), mutated(document.map(orjson.dumps)),
                     _json.map(orjson.dumps), st.binary(max_size=80))
    return st.tuples(st.sampled_from((200, 200, 200, 404)), body)


def _registry_decode(answer: tuple[int, bytes]) -> str:
    """Decode a valid framed payload_head whose schema id the registry answers with `answer`
    (a fresh id per case, so the client's cache never hides an answer)."""
    registry = _hostile_registry()
    codec = registry.codec
    registry.next_id += 1
    registry.answers[registry.next_id] = answer
    record = codec.encode(_HEAD.to_dict())  # framed with id 1: the case's id replaces it
    value = b"\x00" + registry.next_id.to_bytes(4, "big") + record[5:]
    try:
        codec.decode(value, None)
    except DecodeError as error:
        _dead_letter_round_trip(value, error)
        return REJECTED
    return ACCEPTED


# -- .v2 Arrow batches of the batched topics ----------------------------------------------------

BATCH_SCHEMAS = ("payload_head", "features", "score")


@functools.cache
def _batch_seeds(schema: str) -> tuple[bytes, ...]:
    from fastavro.utils import generate_many

    from headbits.common.columnar import encode_table, records_table

    records = list(generate_many(load_schema(schema), 12))
    return tuple(encode_table(records_table(schema, records[:count])) for count in (1, 3, 12))


def _batch_values(schema: str) -> st.SearchStrategy[bytes]:
    seeds = st.sampled_from(_batch_seeds(schema))
    return st.one_of(st.binary(max_size=300), mutated(seeds), seeds,
                     seeds.flatmap(lambda seed: st.integers(0, len(seed)).map(
                         lambda cut: seed[:cut])))


def _batch_decode(schema: str) -> Callable[[bytes], str]:
    def run(value: bytes) -> str:
        from headbits.common.columnar import decode_table, row_value

        try:
            decoded = decode_table(schema, value)
        except DecodeError as error:
            assert str(error), "a DecodeError without a reason"
            return REJECTED
        for row in range(decoded.table.num_rows):  # what a rejected row's dead letter carries
            decode_table(schema, row_value(decoded.table, row))
        return REJECTED if decoded.rejected else ACCEPTED

    return run


# -- settings files ----------------------------------------------------------------------------

def _settings_documents() -> st.SearchStrategy[bytes]:
    from headbits.collector.service import CollectorSettings

    names = st.sampled_from([f.name for f in CollectorSettings.__dataclass_fields__.values()])
    scalar = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20))
    document = st.dictionaries(names | st.text(max_size=8) | st.integers(), scalar
                               | st.lists(scalar, max_size=3), max_size=6)
    return st.one_of(st.binary(max_size=200),
                     document.map(lambda d: _yaml_dump(d).encode()),
                     mutated(document.map(lambda d: _yaml_dump(d).encode())))


def _yaml_dump(document: dict) -> str:
    import yaml

    return yaml.safe_dump(document)


def _settings_file(data: bytes) -> str:
    from headbits.collector.service import CollectorSettings
    from headbits.common.settings import SettingsError, load_settings

    path = _scratch_file().with_suffix(".yaml")
    path.write_bytes(data)
    try:
        load_settings(CollectorSettings, config_file=path, environ={})
    except SettingsError as error:
        assert str(path) in str(error), "a settings error that does not name the file"
        return REJECTED
    return ACCEPTED


def decoders(corpus: Path | None = None) -> list[Decoder]:
    """Every fuzz target; `corpus` (the shared captures) adds real captures to mutate."""
    captures = functools.partial(capture_seeds, corpus)
    result = [
        Decoder("pcap", lambda: st.one_of(
            st.binary(max_size=600), mutated(st.sampled_from(captures())),
            st.sampled_from(captures()).flatmap(
                lambda seed: st.integers(0, len(seed)).map(lambda cut: seed[:cut])),
        ), _read_capture_bytes),
        Decoder("reassembly", _segments, _reassemble),
        Decoder("zeek_websocket_json", lambda: st.one_of(
            st.binary(max_size=200), _json.map(orjson.dumps), mutated_data_message(),
            _heads().map(encode_data_message),
        ), _websocket_message, dead_letters=True),
        Decoder("settings_file", _settings_documents, _settings_file),
    ]
    result.append(Decoder("registry_answer", _registry_answers, _registry_decode,
                          dead_letters=True))
    if broker_available():
        result.append(Decoder("broker_value", _broker_inputs, _broker_message, dead_letters=True))
    result += [Decoder(f"avro_{schema}", functools.partial(_avro_values, schema),
                       _avro_decode(schema), dead_letters=True) for schema in AVRO_SCHEMAS]
    result += [Decoder(f"batch_{schema}", functools.partial(_batch_values, schema),
                       _batch_decode(schema), dead_letters=True) for schema in BATCH_SCHEMAS]
    return result


def run_cases(decoder: Decoder, cases: int, *, catch: bool, seed: int | None = None) -> Outcome:
    """Feed `cases` generated inputs to `decoder`. With `catch`, a crash is counted and the run
    goes on (the bench); without, it propagates so hypothesis shrinks it (the tests)."""
    outcome = Outcome()

    def one(value: Any) -> None:
        outcome.cases += 1
        if not catch:
            outcome.outcomes[decoder.run(value)] += 1
            return
        try:
            outcome.outcomes[decoder.run(value)] += 1
        except Exception as error:  # a crash, counted: the bench reports them all
            outcome.crash_count += 1
            if len(outcome.crashes) < 5:
                outcome.crashes.append((f"{type(error).__name__}: {error}", repr(value)[:300]))

    run = settings(max_examples=cases, deadline=None, database=None, derandomize=seed is None,
                   suppress_health_check=list(HealthCheck))(given(decoder.inputs())(one))
    if seed is not None:
        run = _seeded(run, seed)
    run()
    return outcome


def _seeded(test: Callable[[], None], seed: int) -> Callable[[], None]:
    from hypothesis import seed as hypothesis_seed

    return hypothesis_seed(seed)(test)


__all__ = ["Decoder", "Outcome", "decoders", "run_cases"]
