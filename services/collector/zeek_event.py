"""The `HeadBits::payload_head` event: its argument list, decoded to and encoded from PayloadHead.

Both collector sources (WebSocket and native Broker) and the replay publisher go through this
module, so the wire format is written down exactly once. Values are handled in Broker's JSON v1
form, `{"@data-type": T, "data": V}`: the WebSocket source gets them straight from `orjson`, the
native Broker source converts Broker's values into the same shape (`sources/broker.py`). The
WebSocket source first tries `read_data_message` on the message's text, which reads the form Zeek
writes without building the JSON tree.

An event is the vector `[count 1 (format), count 1 (type: event), [string name, vector args,
vector metadata (optional)]]`. The arguments, in order (zeek/README.md documents the same list):

    0  uid         string        Zeek's connection uid
    1  id          vector        conn_id record: [address orig_h, port orig_p, address resp_h,
                                 port resp_p, ...]; newer Zeek appends fields (proto, ctx),
                                 which are ignored
    2  transport   enum-value    "tcp" or "udp"; must match the ports' protocol
    3  services    set[string]   Zeek's detected services so far, may be empty
    4  orig_head   string        base64 of the originator's first bytes (at most MAX_HEAD_BYTES)
    5  resp_head   string        base64 of the responder's first bytes
    6  orig_seen   count         payload bytes seen from the originator
    7  resp_seen   count         payload bytes seen from the responder
    8  orig_gap    boolean       the originator's head stopped at a gap or missed the stream start
    9  resp_gap    boolean
    10 ts          real          connection start, seconds since the epoch

`ts` is a `real` (the script sends `time_to_double(c$start_time)`) because Broker's JSON writer
renders `time` values in the sensor's local time zone at millisecond resolution.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Sequence
from typing import Any

import orjson

from headbits.common.records import (
    MAX_HEAD_BYTES,
    TRANSPORTS,
    HeadRow,
    InvalidRecord,
    PayloadHead,
)

EVENT_NAME = "HeadBits::payload_head"
DEFAULT_TOPIC = "headbits/heads"
EVENT_FORMAT = 1
EVENT_TYPE = 1

ARGUMENTS: tuple[tuple[str, str], ...] = (
    ("uid", "string"),
    ("id", "vector"),
    ("transport", "enum-value"),
    ("services", "set"),
    ("orig_head", "string"),
    ("resp_head", "string"),
    ("orig_seen", "count"),
    ("resp_seen", "count"),
    ("orig_gap", "boolean"),
    ("resp_gap", "boolean"),
    ("ts", "real"),
)
"""(name, Broker data type) of each argument, in order."""

_MAX_BASE64_CHARS = 4 * ((MAX_HEAD_BYTES + 2) // 3)

# Python types a typed value's `data` may have, per Broker data type.
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "enum-value": (str,),
    "address": (str,),
    "port": (str,),
    "count": (int,),
    "boolean": (bool,),
    "real": (float, int),
    "vector": (list,),
    "set": (list,),
}


class EventError(ValueError):
    """An event that is not a well-formed HeadBits::payload_head; the message says why."""


def _data(value: Any, kind: str, what: str) -> Any:
    """The `data` of a typed value after checking its Broker type and its JSON type."""
    try:
        actual = value["@data-type"]
        data = value["data"]
    except (TypeError, KeyError):
        raise EventError(f"{what} is not a typed value {{'@data-type', 'data'}}") from None
    if actual != kind:
        raise EventError(f"{what} has type {actual!r}, expected {kind!r}")
    if not isinstance(data, _PYTHON_TYPES[kind]) or (isinstance(data, bool) and kind != "boolean"):
        raise EventError(f"{what} ({kind}) holds {type(data).__name__} {data!r:.40}")
    if kind == "count" and data < 0:
        raise EventError(f"{what} is a negative count {data}")
    return data


def _port(value: Any, what: str) -> tuple[int, str]:
    return _port_text(_data(value, "port", what), what)


def _port_text(text: str, what: str) -> tuple[int, str]:
    number, _, proto = text.partition("/")
    # isascii: str.isdigit also holds for digits such as "²" that int() refuses
    if not (number.isascii() and number.isdigit()) or not proto or int(number) > 65535:
        raise EventError(f"{what} {text!r} is not '<0..65535>/<proto>'")
    return int(number), proto


def _head(value: Any, what: str) -> bytes:
    return _base64_head(_data(value, "string", what), what)


def _base64_head(text: str, what: str) -> bytes:
    if len(text) > _MAX_BASE64_CHARS:
        raise EventError(f"{what} has {len(text)} base64 characters, over {MAX_HEAD_BYTES} bytes")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as error:
        raise EventError(f"{what} is not valid base64: {error}") from None


def decode_arguments(args: Sequence[Any], sensor: str) -> PayloadHead:
    """PayloadHead from the event's typed argument list, or EventError naming the bad argument."""
    if len(args) != len(ARGUMENTS):
        raise EventError(f"{EVENT_NAME} has {len(args)} arguments, expected {len(ARGUMENTS)}")
    uid = _data(args[0], "string", "argument uid")
    conn_id = _data(args[1], "vector", "argument id")
    if len(conn_id) < 4:
        raise EventError(f"argument id has {len(conn_id)} fields, expected at least 4")
    orig_h = _data(conn_id[0], "address", "id.orig_h")
    orig_p, orig_proto = _port(conn_id[1], "id.orig_p")
    resp_h = _data(conn_id[2], "address", "id.resp_h")
    resp_p, resp_proto = _port(conn_id[3], "id.resp_p")
    transport = _data(args[2], "enum-value", "argument transport")
    if not orig_proto == resp_proto == transport:
        raise EventError(
            f"transport {transport!r} does not match the ports {orig_proto!r}/{resp_proto!r}"
        )
    services = tuple(
        sorted(_data(item, "string", "a service") for item in _data(args[3], "set", "services"))
    )
    head = PayloadHead(
        uid=uid,
        ts=float(_data(args[10], "real", "argument ts")),
        sensor=sensor,
        orig_h=orig_h,
        orig_p=orig_p,
        resp_h=resp_h,
        resp_p=resp_p,
        transport=transport,
        services=services,
        orig_head=_head(args[4], "argument orig_head"),
        resp_head=_head(args[5], "argument resp_head"),
        orig_bytes_seen=_data(args[6], "count", "argument orig_seen"),
        resp_bytes_seen=_data(args[7], "count", "argument resp_seen"),
        orig_gap=_data(args[8], "boolean", "argument orig_gap"),
        resp_gap=_data(args[9], "boolean", "argument resp_gap"),
    )
    try:
        return head.validate()
    except InvalidRecord as error:
        raise EventError(str(error)) from None


def decode_event(event: Any, sensor: str) -> PayloadHead:
    """PayloadHead from a typed event vector (a data message's own `@data-type`/`data` pair)."""
    return PayloadHead(*decode_event_row(event, sensor))


def decode_event_row(event: Any, sensor: str) -> HeadRow:
    """`decode_event`'s head as a HeadRow, for sources that hand on columns.

    Every event the Zeek package publishes has one shape, which `_read_common` reads in one
    pass, a third of the checked reading's cost on the collector's hottest path. Whatever that
    pass does not recognise, it leaves to `decode_event_checked`, which accepts exactly what the
    fast pass accepts and more (an integral `ts`, extra trailing items) and otherwise names the
    first thing wrong (tests/test_zeek_event.py holds the two to the same verdicts).
    """
    try:
        row = _read_common(event, sensor)
    except (LookupError, TypeError, ValueError, AttributeError):  # EventError too
        row = None
    return row if row is not None else decode_event_checked(event, sensor).row()


_COMMON_ARGUMENT_TYPES = tuple(kind for _, kind in ARGUMENTS)
_COMMON_PYTHON_TYPES = (str, list, str, list, str, str, int, int, bool, bool, float)
_ID_TYPES = ("address", "port", "address", "port")


def _read_common(event: Any, sensor: str) -> HeadRow | None:
    """The head of an event of the one common shape, or None (or an exception) for any other:
    exact JSON types only (no bool for a count, no int for a real), exactly three event items,
    and PayloadHead.validate's conditions checked here, on the values."""
    header, kind, body = event["data"]
    if (event["@data-type"], header["@data-type"], kind["@data-type"], body["@data-type"]) != (
            "vector", "count", "count", "vector") or type(header["data"]) is not int or (
            header["data"], kind["data"]) != (EVENT_FORMAT, EVENT_TYPE) or type(
            kind["data"]) is not int:
        return None
    name, arguments = body["data"][:2]
    if name["@data-type"] != "string" or name["data"] != EVENT_NAME or (
            arguments["@data-type"] != "vector"):
        return None
    args = arguments["data"]
    if type(args) is not list or len(args) != len(ARGUMENTS) or tuple(
            [arg["@data-type"] for arg in args]) != _COMMON_ARGUMENT_TYPES:
        return None
    values = [arg["data"] for arg in args]
    if tuple(map(type, values)) != _COMMON_PYTHON_TYPES:
        return None
    uid, conn_id, transport, services, orig_text, resp_text, orig_seen, resp_seen, orig_gap, \
        resp_gap, ts = values
    orig, orig_port, resp, resp_port = conn_id[:4]
    orig_h, resp_h = orig["data"], resp["data"]
    if (orig["@data-type"], orig_port["@data-type"], resp["@data-type"],
            resp_port["@data-type"]) != _ID_TYPES or type(orig_h) is not str or type(
            resp_h) is not str or not uid or transport not in TRANSPORTS:
        return None
    orig_p, orig_proto = _port_text(orig_port["data"], "id.orig_p")
    resp_p, resp_proto = _port_text(resp_port["data"], "id.resp_p")
    orig_head = _base64_head(orig_text, "argument orig_head")
    resp_head = _base64_head(resp_text, "argument resp_head")
    if not orig_proto == resp_proto == transport or not (
            len(orig_head) <= min(orig_seen, MAX_HEAD_BYTES)
            and len(resp_head) <= min(resp_seen, MAX_HEAD_BYTES)) or any(
            service["@data-type"] != "string" or type(service["data"]) is not str
            for service in services):
        return None
    return (uid, ts, sensor, orig_h, orig_p, resp_h, resp_p, transport,
            tuple(sorted([service["data"] for service in services])), orig_head, resp_head,
            orig_seen, resp_seen, orig_gap, resp_gap)


def _typed_text(kind: str, data: bytes) -> bytes:
    return rb'\{"@data-type":"' + kind.encode() + rb'","data":' + data + rb"\}"


# A JSON string with no escape and no control character: its bytes are its UTF-8 text.
_PLAIN_STRING = rb'"([^"\\\x00-\x1f]*)"'
_PORT = rb'"(\d{1,5})/(tcp|udp)"'
_COUNT = rb"(0|[1-9]\d{0,18})"  # at most 19 digits: within 64 bits, an int to orjson too
_BASE64 = rb'"([A-Za-z0-9+/=]*)"'
# A JSON number with a fraction or an exponent (orjson reads it as a float, never an int);
# read_data_message refuses the infinite ones, which orjson refuses.
_EXPONENT = rb"[eE][+-]?\d{1,3}"
_REAL = rb"(-?(?:0|[1-9]\d{0,19})(?:\.\d{1,20}(?:" + _EXPONENT + rb")?|" + _EXPONENT + rb"))"
_SERVICE = rb'\{"@data-type":"string","data":"[^"\\\x00-\x1f]*"\}'
_COMMON_TEXT = re.compile(b"".join([
    rb'\{"type":"data-message","topic":"[ !#-\[\]-~]*","@data-type":"vector","data":\[',  # ASCII
    _typed_text("count", rb"1"), b",", _typed_text("count", rb"1"), b",",
    rb'\{"@data-type":"vector","data":\[', _typed_text("string", rb'"HeadBits::payload_head"'),
    rb',\{"@data-type":"vector","data":\[',
    _typed_text("string", _PLAIN_STRING), b",",
    rb'\{"@data-type":"vector","data":\[',
    _typed_text("address", _PLAIN_STRING), b",", _typed_text("port", _PORT), b",",
    _typed_text("address", _PLAIN_STRING), b",", _typed_text("port", _PORT),
    rb"(?:,", _typed_text("count", rb"(?:0|[1-9]\d{0,18})"), rb")?",  # Zeek 7.1+: id.proto
    rb'(?:,\{"@data-type":"vector","data":\[\]\})?',  # Zeek 8: id.ctx, empty
    rb"\]\},",
    _typed_text("enum-value", rb'"(tcp|udp)"'), b",",
    rb'\{"@data-type":"set","data":\[((?:', _SERVICE, rb"(?:,", _SERVICE, rb")*)?)\]\},",
    _typed_text("string", _BASE64), b",", _typed_text("string", _BASE64), b",",
    _typed_text("count", _COUNT), b",", _typed_text("count", _COUNT), b",",
    _typed_text("boolean", rb"(true|false)"), b",", _typed_text("boolean", rb"(true|false)"), b",",
    _typed_text("real", _REAL),
    rb'\]\}(?:,\{"@data-type":"vector","data":\[\]\})?\]\}\]\}',
]))
_SERVICE_TEXT = re.compile(rb'"data":"([^"\\\x00-\x1f]*)"')


def read_data_message(message: bytes, sensor: str) -> HeadRow | None:
    """The head of a `data-message` text in the exact form Zeek's WebSocket API writes for the
    package's event (compact, keys in Broker's order, plain strings), read by one regular
    expression without building the JSON tree; None for any other text, which the caller
    parses as JSON (`decode_event_row`). Whatever it reads, the JSON reading reads the same
    (tests/test_zeek_event.py compares them on valid and mutated messages); tests/
    test_zeek_cluster.py checks that a real Zeek's messages take this path.
    """
    match = _COMMON_TEXT.fullmatch(message)
    if match is None:
        return None
    (uid, orig_h, orig_p, orig_proto, resp_h, resp_p, resp_proto, transport, services,
     orig_text, resp_text, orig_seen, resp_seen, orig_gap, resp_gap, ts) = match.groups()
    try:
        orig_head = binascii.a2b_base64(orig_text, strict_mode=True)
        resp_head = binascii.a2b_base64(resp_text, strict_mode=True)
        row = (uid.decode(), float(ts), sensor, orig_h.decode(), int(orig_p), resp_h.decode(),
               int(resp_p), transport.decode(),
               tuple(sorted([name.decode() for name in _SERVICE_TEXT.findall(services)])),
               orig_head, resp_head, int(orig_seen), int(resp_seen), orig_gap == b"true",
               resp_gap == b"true")
    except ValueError:  # binascii.Error, UnicodeDecodeError
        return None
    if not uid or not math.isfinite(row[1]) or not orig_proto == resp_proto == transport or (
            row[4] > 65535 or row[6] > 65535) or len(orig_text) > _MAX_BASE64_CHARS or (
            len(resp_text) > _MAX_BASE64_CHARS) or not (
            len(orig_head) <= min(row[11], MAX_HEAD_BYTES)
            and len(resp_head) <= min(row[12], MAX_HEAD_BYTES)):
        return None
    return row


def decode_event_checked(event: Any, sensor: str) -> PayloadHead:
    """`decode_event` one typed value at a time: the reading that says what is wrong."""
    items = _data(event, "vector", "message data")
    if len(items) < 3:
        raise EventError(f"event vector has {len(items)} items, expected [format, type, body]")
    if _data(items[0], "count", "event format") != EVENT_FORMAT:
        raise EventError(f"event format {items[0]['data']} is not {EVENT_FORMAT}")
    if _data(items[1], "count", "message type") != EVENT_TYPE:
        raise EventError(f"message type {items[1]['data']} is not an event ({EVENT_TYPE})")
    body = _data(items[2], "vector", "event body")
    if len(body) < 2:
        raise EventError(f"event body has {len(body)} items, expected [name, args, metadata]")
    name = _data(body[0], "string", "event name")
    if name != EVENT_NAME:
        raise EventError(f"event {name!r} is not {EVENT_NAME}")
    return decode_arguments(_data(body[1], "vector", "event arguments"), sensor)


def _typed(kind: str, data: Any) -> dict:
    return {"@data-type": kind, "data": data}


def encode_event(head: PayloadHead) -> dict:
    """The typed event vector the Zeek script publishes for `head` (inverse of decode_event)."""
    transport = head.transport
    args = [
        _typed("string", head.uid),
        _typed(
            "vector",
            [
                _typed("address", head.orig_h),
                _typed("port", f"{head.orig_p}/{transport}"),
                _typed("address", head.resp_h),
                _typed("port", f"{head.resp_p}/{transport}"),
            ],
        ),
        _typed("enum-value", transport),
        _typed("set", [_typed("string", service) for service in head.services]),
        _typed("string", binascii.b2a_base64(head.orig_head, newline=False).decode()),
        _typed("string", binascii.b2a_base64(head.resp_head, newline=False).decode()),
        _typed("count", head.orig_bytes_seen),
        _typed("count", head.resp_bytes_seen),
        _typed("boolean", head.orig_gap),
        _typed("boolean", head.resp_gap),
        _typed("real", head.ts),
    ]
    return _typed(
        "vector",
        [
            _typed("count", EVENT_FORMAT),
            _typed("count", EVENT_TYPE),
            _typed("vector", [_typed("string", EVENT_NAME), _typed("vector", args),
                              _typed("vector", [])]),
        ],
    )


def encode_data_message(head: PayloadHead, topic: str = DEFAULT_TOPIC) -> bytes:
    """The JSON v1 `data-message` text a Zeek WebSocket server sends for `head`."""
    return orjson.dumps({"type": "data-message", "topic": topic, **encode_event(head)})
