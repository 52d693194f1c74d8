"""Source: Broker's native Python bindings, peering with Zeek's `Broker::listen` (Zeek <= 8.0).

The `broker` module ships with Zeek (or Debian's python3-broker) outside any virtualenv;
`scripts/link-broker.sh` links it into one. It is imported lazily so the rest of the collector
runs without it. Broker's subscriber queue (`queue_size` messages) is the bounded buffer. Zeek's
side does not wait for a slow peer: past `Broker::peer_buffer_size` (8192 messages) it applies
`Broker::peer_overflow_policy` (default `drop_oldest`: events are dropped without a word; with
`disconnect` the peer is dropped), see zeek/README.md. A lost peer is re-peered by Broker itself
every `retry` seconds. Every status and error Broker reports is logged (peer lost or removed, and
errors, as warnings), counted in `status_codes` and, given a Prometheus registry, in
`headbits_zeek_link_events_total{source="broker", event=...}`. The status subscriber is polled:
its blocking `get` is broken in Broker 1.4's bindings.
The bindings' `Subscriber` wrapper is bypassed: its `poll` converts each value through
`Data.to_py`, which rebuilds a table of converters per value (about 3.5k events/s here), and its
topic handling uses `collections.Iterable`, gone since Python 3.10.

Values are converted into Broker's JSON v1 shape (`{"@data-type", "data"}`) so that
`zeek_event.decode_event` decodes both sources; a rejected event's raw bytes are that JSON.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import select
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from headbits.collector.sources.base import EndOfSource, Rejected, Source, SourceItem
from headbits.collector.sources.websocket import link_events_counter
from headbits.collector.zeek_event import DEFAULT_TOPIC, EventError, decode_event

LOG = logging.getLogger(__name__)


class BrokerUnavailableError(ImportError):
    """The `broker` module cannot be imported; the message says how to provide it."""


def import_broker() -> Any:
    try:
        import broker
    except ImportError as error:
        raise BrokerUnavailableError(
            "Broker's Python bindings are not importable: install Zeek's bindings or Debian's "
            "python3-broker and run scripts/link-broker.sh to link them into the virtualenv"
        ) from error
    return broker


@dataclass(frozen=True)
class BrokerTLS:
    """Broker's TLS settings (Zeek's `Broker::ssl_*`); `disable` matches `Broker::disable_ssl`."""

    disable: bool = False
    ca_file: str = ""
    ca_path: str = ""
    certificate: str = ""
    key: str = ""
    passphrase: str = ""


def make_endpoint(tls: BrokerTLS = BrokerTLS()) -> Any:
    """A Broker endpoint configured with `tls` (peers must agree on TLS being on or off)."""
    broker = import_broker()
    options = broker.BrokerOptions()
    options.disable_ssl = tls.disable
    config = broker.Configuration(options)
    config.openssl_cafile = tls.ca_file
    config.openssl_capath = tls.ca_path
    config.openssl_certificate = tls.certificate
    config.openssl_key = tls.key
    config.openssl_passphrase = tls.passphrase
    return broker.Endpoint(config)


class BrokerSource(Source):
    """PayloadHeads from one Zeek peer at `host:port`; `sensor` names that Zeek in every head."""

    def __init__(
        self,
        host: str,
        port: int,
        sensor: str,
        *,
        topics: Sequence[str] = (DEFAULT_TOPIC,),
        queue_size: int = 20_000,
        retry: float = 1.0,
        tls: BrokerTLS = BrokerTLS(),
        registry: CollectorRegistry | None = None,
    ) -> None:
        if retry < 1:
            # Broker truncates the retry interval to whole seconds, and 0 means never re-peer.
            raise ValueError(f"retry={retry}: Broker re-peers in whole seconds, use 1 or more")
        broker = import_broker()
        self.host, self.port, self.sensor = host, port, sensor
        self._broker = broker
        self._endpoint = make_endpoint(tls)
        # The internal subscriber: its poll() gives raw (Topic, Data) pairs, and the wrapper's
        # topic handling uses collections.Iterable, which Python 3.10 removed.
        self._subscriber = broker._broker.Endpoint.make_subscriber(
            self._endpoint, broker._broker.VectorTopic([broker.Topic(t) for t in topics]),
            queue_size,
        )
        self._status = self._endpoint.make_status_subscriber(True)
        self._pending: deque[tuple[str, Any]] = deque()
        self._converters = _converters(broker)
        self.counts = {"messages": 0, "heads": 0, "rejected": 0, "peer_events": 0}
        self.status_codes: Counter[str] = Counter()
        self._link_events = link_events_counter(registry) if registry is not None else None
        self._endpoint.peer_nosync(host, port, retry)
        self._closed = False

    def read(self, max_items: int, timeout: float) -> list[SourceItem]:
        if self._closed:
            raise EndOfSource(f"Broker source {self.host}:{self.port} is closed")
        self._log_status()
        if not self._pending:
            ready, _, _ = select.select([self._subscriber.fd()], [], [], timeout)
            if ready:
                self._pending.extend(self._subscriber.poll())
        count = min(max_items, len(self._pending))
        return [self._decode(*self._pending.popleft()) for _ in range(count)]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._endpoint.shutdown()

    def _decode(self, topic: Any, data: Any) -> SourceItem:
        self.counts["messages"] += 1
        item = decode_message(topic.string(), data, self._converters, self.sensor,
                              f"broker {self.host}:{self.port} message {self.counts['messages']}")
        self.counts["rejected" if isinstance(item, Rejected) else "heads"] += 1
        return item

    def _log_status(self) -> None:
        for status in self._status.poll():
            self.counts["peer_events"] += 1
            code = status.code() if hasattr(status, "code") else status
            name = status_name(code)
            self.status_codes[name] += 1
            if self._link_events is not None:
                self._link_events.labels("broker", name).inc()
            level = logging.INFO if name in _BENIGN_STATUS else logging.WARNING
            LOG.log(level, "Broker %s:%s: %s %s", self.host, self.port, name, status)


_BENIGN_STATUS = {"peer_added", "endpoint_discovered"}


def status_name(code: Any) -> str:
    """`SC.PeerLost` or `ErrorCode.PeerUnavailable` -> `peer_lost`, `peer_unavailable`."""
    text = str(code).rsplit(".", 1)[-1]
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in text).lstrip("_")


def _timestamp_text(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _converters(broker: Any) -> dict[int, Any]:
    """int(Broker data type) -> function of a Data value giving its JSON v1 typed value.

    Keys are ints because hashing and comparing the bindings' enum objects costs a microsecond.
    """
    kind = broker.Data.Type

    def typed(name: str, value: Any) -> dict:
        return {"@data-type": name, "data": value}

    def vector(data: Any) -> dict:
        items = data.as_vector()  # indexing is twice as fast as iterating a bound Vector
        return typed("vector", [to_typed(items[i], table) for i in range(len(items))])

    def text(data: Any) -> dict:
        return typed("string", data.as_string().decode("utf-8", "backslashreplace"))

    table = {
        int(kind.Nil): lambda data: typed("none", {}),
        int(kind.Boolean): lambda data: typed("boolean", data.as_boolean()),
        int(kind.Count): lambda data: typed("count", data.as_count()),
        int(kind.Integer): lambda data: typed("integer", data.as_integer()),
        int(kind.Real): lambda data: typed("real", data.as_real()),
        int(kind.String): text,
        int(kind.EnumValue): lambda data: typed("enum-value", data.as_enum_value().name),
        int(kind.Address): lambda data: typed("address", str(data.as_address())),
        int(kind.Subnet): lambda data: typed("subnet", str(data.as_subnet())),
        int(kind.Port): lambda data: typed("port", str(data.as_port())),
        int(kind.Timespan): lambda data: typed(
            "timespan", f"{round(data.as_timespan() * 1e9)}ns"),
        int(kind.Timestamp): lambda data: typed(
            "timestamp", _timestamp_text(data.as_timestamp())),
        int(kind.Vector): vector,
        int(kind.Set): lambda data: typed(
            "set", [to_typed(item, table) for item in data.as_set()]),
        int(kind.Table): lambda data: typed("table", [
            {"key": to_typed(key, table), "value": to_typed(value, table)}
            for key, value in data.as_table().items()
        ]),
    }
    return table


def decode_message(topic: str, data: Any, converters: dict[int, Any], sensor: str,
                   origin: str) -> SourceItem:
    """One Broker message: its head, or the Rejected whose raw bytes are the message as JSON v1
    (what a WebSocket subscriber would have received) and whose reason says what is wrong."""
    typed = to_typed(data, converters)
    try:
        return decode_event(typed, sensor)
    except EventError as error:
        raw = orjson.dumps({"type": "data-message", "topic": topic, **typed})
        return Rejected(raw=raw, reason=str(error), origin=origin)


def to_typed(data: Any, converters: dict[int, Any]) -> dict:
    """Broker value -> JSON v1 typed value (timestamps in UTC, timespans in nanoseconds)."""
    return converters[int(data.get_type())](data)


def from_typed(typed: dict) -> Any:
    """JSON v1 typed value -> a Python value `broker.Data` accepts (the publisher's direction)."""
    broker = import_broker()
    kind, data = typed["@data-type"], typed["data"]
    if kind in ("vector", "set"):
        items = [from_typed(item) for item in data]
        return tuple(items) if kind == "vector" else set(items)
    if kind == "table":
        return {from_typed(entry["key"]): from_typed(entry["value"]) for entry in data}
    simple = {
        "none": lambda: None,
        "boolean": lambda: bool(data),
        "count": lambda: broker.Count(data),
        "integer": lambda: int(data),
        "real": lambda: float(data),
        "string": lambda: str(data),
        "enum-value": lambda: broker.Enum(data),
        "address": lambda: ipaddress.ip_address(data),
        "subnet": lambda: ipaddress.ip_network(data, strict=False),
        "port": lambda: _port(broker, data),
        "timespan": lambda: _timespan(data),
        "timestamp": lambda: datetime.datetime.fromisoformat(data).replace(tzinfo=datetime.UTC),
    }
    if kind not in simple:
        raise ValueError(f"unknown Broker data type {kind!r}")
    return simple[kind]()


def _port(broker: Any, text: str) -> Any:
    number, _, proto = text.partition("/")
    protocols = {"tcp": broker.Port.TCP, "udp": broker.Port.UDP, "icmp": broker.Port.ICMP}
    return broker.Port(int(number), protocols.get(proto, broker.Port.Unknown))


_TIMESPAN_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0,
                   "d": 86400.0}


def _timespan(text: str) -> datetime.timedelta:
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits):]
    if unit not in _TIMESPAN_UNITS:
        raise ValueError(f"timespan {text!r} has no known unit")
    return datetime.timedelta(seconds=int(digits) * _TIMESPAN_UNITS[unit])
