"""HeadBits::payload_head decoding: exact round trips, and a clear reason for every bad shape."""

from __future__ import annotations

import copy
import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headbits.collector.zeek_event import (
    ARGUMENTS,
    EventError,
    decode_event,
    decode_event_checked,
    decode_event_row,
    encode_data_message,
    encode_event,
    read_data_message,
)
from headbits.common.records import MAX_HEAD_BYTES, PayloadHead
from headbits.devtools.fuzzing import mutated_data_message

HEAD = PayloadHead(
    uid="CHhAvVGS1DHFjwGM9", ts=1700000000.123456, sensor="sensor-a", orig_h="10.0.0.1",
    orig_p=51234, resp_h="2001:db8::1", resp_p=443, transport="tcp", services=("ssl",),
    orig_head=bytes(range(64)), resp_head=b"\x16\x03\x03\x00\x5a", orig_bytes_seen=517,
    resp_bytes_seen=5, orig_gap=False, resp_gap=True,
)


def args_of(event: dict) -> list:
    return event["data"][2]["data"][1]["data"]


def test_round_trip_through_json_text() -> None:
    message = orjson.loads(encode_data_message(HEAD, "headbits/heads"))
    assert message["type"] == "data-message"
    assert message["topic"] == "headbits/heads"
    assert decode_event(message, "sensor-a") == HEAD


def test_argument_table_matches_encoder() -> None:
    typed = args_of(encode_event(HEAD))
    assert [arg["@data-type"] for arg in typed] == [kind for _, kind in ARGUMENTS]


def test_newer_conn_id_fields_are_ignored() -> None:
    event = encode_event(HEAD)
    args_of(event)[1]["data"] += [{"@data-type": "count", "data": 6},
                                  {"@data-type": "vector", "data": []}]
    assert decode_event(event, "sensor-a") == HEAD


def test_event_without_metadata_vector_decodes() -> None:
    event = encode_event(HEAD)
    del event["data"][2]["data"][2]
    assert decode_event(event, "sensor-a") == HEAD


def test_services_are_sorted_and_may_be_empty() -> None:
    event = encode_event(HEAD)
    args_of(event)[3]["data"] = [{"@data-type": "string", "data": s} for s in ("http", "dns")]
    assert decode_event(event, "x").services == ("dns", "http")
    args_of(event)[3]["data"] = []
    assert decode_event(event, "x").services == ()


def _mutated(change) -> dict:
    event = copy.deepcopy(encode_event(HEAD))
    change(event)
    return event


def _set_arg(index: int, kind: str, data) -> object:
    def change(event: dict) -> None:
        args_of(event)[index] = {"@data-type": kind, "data": data}
    return change


MALFORMED = {
    "wrong name": (lambda e: e["data"][2]["data"].__setitem__(
        0, {"@data-type": "string", "data": "Other::event"}), "is not HeadBits::payload_head"),
    "too few args": (lambda e: args_of(e).pop(), "has 10 arguments, expected 11"),
    "too many args": (lambda e: args_of(e).append({"@data-type": "count", "data": 1}),
                      "has 12 arguments"),
    "not an event vector": (lambda e: e.update({"@data-type": "count", "data": 1}),
                            "message data has type 'count'"),
    "format 2": (lambda e: e["data"][0].update(data=2), "event format 2"),
    "short body": (lambda e: e["data"][2]["data"].pop(1) and e["data"][2]["data"].pop(),
                   "event body has"),
    "uid as count": (_set_arg(0, "count", 5), "argument uid has type 'count'"),
    "seen as string": (_set_arg(6, "count", "5"), "argument orig_seen (count) holds str"),
    "bool as count": (_set_arg(6, "count", True), "argument orig_seen (count) holds bool"),
    "negative count": (_set_arg(7, "count", -1), "negative count"),
    "gap as count": (_set_arg(8, "count", 1), "argument orig_gap has type 'count'"),
    "ts as timestamp": (_set_arg(10, "timestamp", "2022-04-10T07:00:00.000"), "argument ts"),
    "bad base64": (_set_arg(4, "string", "not base64!"), "orig_head is not valid base64"),
    "oversize head": (_set_arg(5, "string", "QUFB" * 30),
                      f"over {MAX_HEAD_BYTES} bytes"),
    "seen below head": (_set_arg(7, "count", 2), "resp_bytes_seen=2 is less than"),
    "transport mismatch": (_set_arg(2, "enum-value", "udp"), "does not match the ports"),
    "bad port": (lambda e: args_of(e)[1]["data"].__setitem__(
        1, {"@data-type": "port", "data": "99999/tcp"}), "is not '<0..65535>/<proto>'"),
    "short conn_id": (lambda e: args_of(e)[1]["data"].pop(), "id has 3 fields"),
    "untyped value": (lambda e: args_of(e).__setitem__(0, "CHh"), "argument uid is not a typed"),
    "empty uid": (_set_arg(0, "string", ""), "uid is empty"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_event_names_the_problem(case: str) -> None:
    change, reason = MALFORMED[case]
    with pytest.raises(EventError) as raised:
        decode_event(_mutated(change), "x")
    assert reason in str(raised.value)


heads = st.builds(
    PayloadHead,
    uid=st.text(min_size=1, max_size=20),
    ts=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    sensor=st.just("s"),
    orig_h=st.ip_addresses().map(str),
    orig_p=st.integers(0, 65535),
    resp_h=st.ip_addresses().map(str),
    resp_p=st.integers(0, 65535),
    transport=st.sampled_from(("tcp", "udp")),
    services=st.lists(st.text(min_size=1, max_size=8), unique=True).map(lambda s: tuple(sorted(s))),
    orig_head=st.binary(max_size=MAX_HEAD_BYTES),
    resp_head=st.binary(max_size=MAX_HEAD_BYTES),
    orig_bytes_seen=st.just(10**6),
    resp_bytes_seen=st.just(10**6),
    orig_gap=st.booleans(),
    resp_gap=st.booleans(),
)


@given(heads)
def test_any_valid_head_round_trips_exactly(head: PayloadHead) -> None:
    assert decode_event(orjson.loads(encode_data_message(head)), "s") == head


def _verdict(decode, event: object) -> PayloadHead | str:
    try:
        return decode(event, "s")
    except EventError as error:
        return f"rejected: {error}"


@given(mutated_data_message())
def test_the_fast_reading_and_the_checked_one_agree(message: bytes) -> None:
    """decode_event's one-pass reading of the common shape hands everything else to the
    checked reading: on events with values replaced anywhere, both give the same head or both
    refuse it (with the checked reading's reason)."""
    event = orjson.loads(message)
    assert _verdict(decode_event, event) == _verdict(decode_event_checked, event)


def test_a_unicode_digit_port_is_refused_not_raised() -> None:
    event = encode_event(HEAD)
    args_of(event)[1]["data"][1] = {"@data-type": "port", "data": "\u00b2/tcp"}
    for decode in (decode_event, decode_event_checked):
        with pytest.raises(EventError, match=re.escape("is not '<0..65535>/<proto>'")):
            decode(event, "x")


def _json_reading(message: bytes) -> tuple | str:
    """What the WebSocket source makes of a text it does not read by the expression."""
    try:
        parsed = orjson.loads(message)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(parsed, dict) or parsed.get("type") != "data-message":
        return "not a data message"
    try:
        return decode_event_row(parsed, "s")
    except EventError as error:
        return f"rejected: {error}"


plain_text = st.text("CAZaz09-_.:", min_size=1, max_size=20)
plain_heads = st.builds(
    PayloadHead, uid=plain_text, ts=st.floats(0, 4e9, allow_nan=False), sensor=st.just("s"),
    orig_h=st.ip_addresses().map(str), orig_p=st.integers(0, 65535),
    resp_h=st.ip_addresses().map(str), resp_p=st.integers(0, 65535),
    transport=st.sampled_from(("tcp", "udp")),
    services=st.lists(plain_text, unique=True, max_size=3).map(lambda s: tuple(sorted(s))),
    orig_head=st.binary(max_size=MAX_HEAD_BYTES), resp_head=st.binary(max_size=MAX_HEAD_BYTES),
    orig_bytes_seen=st.integers(MAX_HEAD_BYTES, 2**63), resp_bytes_seen=st.integers(64, 10**6),
    orig_gap=st.booleans(), resp_gap=st.booleans(),
)


@given(plain_heads)
def test_the_text_reading_reads_the_form_zeek_writes(head: PayloadHead) -> None:
    assert read_data_message(encode_data_message(head), "s") == head.row()


@given(heads)
def test_the_text_reading_of_any_head_is_the_json_readings_or_none(head: PayloadHead) -> None:
    """Quotes, backslashes, control characters, any Unicode: escaped strings are left to JSON."""
    message = encode_data_message(head)
    row = read_data_message(message, "s")
    assert row is None or row == _json_reading(message) == head.row()


@st.composite
def byte_edited_messages(draw: st.DrawFn) -> bytes:
    """A valid message with a few bytes replaced, deleted, inserted or a stretch repeated."""
    message = bytearray(encode_data_message(draw(plain_heads)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(message) - 1))
        edit = draw(st.sampled_from(("replace", "delete", "insert", "repeat")))
        if edit == "replace":
            message[at] = draw(st.sampled_from(b'0123456789"\\,{}[]:.-eE+/= \x00\xff'))
        elif edit == "delete":
            del message[at]
        elif edit == "insert":
            message.insert(at, draw(st.integers(0, 255)))
        else:
            message[at:at] = message[at:at + draw(st.integers(1, 40))]
    return bytes(message)


@given(st.one_of(byte_edited_messages(), mutated_data_message()))
def test_what_the_text_reading_accepts_the_json_reading_accepts_the_same(message: bytes) -> None:
    row = read_data_message(message, "s")
    assert row is None or row == _json_reading(message)
