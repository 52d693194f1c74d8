"""WebSocket source against the JSON v1 replay server, with Zeek's documented examples verbatim."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import orjson
import pytest

from headbits.collector.sources.base import EndOfSource, Rejected
from headbits.collector.sources.websocket import WebSocketSource
from headbits.collector.zeek_event import encode_event
from headbits.common.records import PayloadHead
from headbits.devtools.zeek_replay import WebSocketReplayServer, data_messages
from tests.data import zeek_websocket_api_examples as docs
from tests.source_helpers import RunningServer, make_heads, read_until

TOPIC = "headbits/heads"


@pytest.fixture
def serve() -> Iterator:
    running: list[RunningServer] = []

    def start(messages, **options) -> RunningServer:
        server = RunningServer(WebSocketReplayServer(messages, **options))
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


def test_all_heads_arrive_exactly_after_the_documented_ack(serve, caplog) -> None:
    caplog.set_level(logging.INFO)
    ack = json.loads(docs.ZEEK_ACK)
    heads = make_heads(3000)
    server = serve(data_messages(heads, TOPIC), endpoint_id=ack["endpoint"],
                   version=ack["version"])
    assert server.server.ack == docs.ZEEK_ACK.encode()
    source = WebSocketSource(server.url, "zeek-1")
    try:
        items = read_until(source, len(heads))
    finally:
        source.close()
    assert items == heads
    assert server.server.subscriptions == [[TOPIC]]
    assert ack["endpoint"] in caplog.text and "8.0.0-dev.684" in caplog.text
    assert source.counts["connections"] == 1


def test_broker_doc_ack_is_accepted(serve) -> None:
    ack = json.loads(docs.BROKER_ACK)
    server = serve(data_messages(make_heads(5), TOPIC), endpoint_id=ack["endpoint"],
                   version=ack["version"])
    source = WebSocketSource(server.url, "zeek-1")
    try:
        assert read_until(source, 5) == make_heads(5)
    finally:
        source.close()


def test_handshake_error_is_logged_and_retried(serve, caplog) -> None:
    server = serve([], handshake_error=orjson.dumps(json.loads(docs.ERROR_MESSAGE)))
    source = WebSocketSource(server.url, "zeek-1", reconnect_initial=0.05, reconnect_max=0.1)
    deadline = time.monotonic() + 10
    while server.server.clients < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    source.close()
    assert server.server.clients >= 2
    assert source.counts["server_errors"] >= 1
    assert source.counts["connections"] == 0
    assert "deserialization_failed" in caplog.text
    assert "unexpected_character(1, 1)" in caplog.text


def test_documented_messages_are_rejected_or_logged(serve, caplog) -> None:
    heads = make_heads(2)
    messages = [
        ("zeek.test", docs.ZEEK_HELLO_EVENT.encode()),
        ("/foo/bar", docs.EVENT_1_MESSAGE.encode()),
        ("/foo/bar", docs.DATA_MESSAGE.encode()),
        (None, docs.ERROR_MESSAGE.encode()),
        *data_messages(heads, TOPIC),
    ]
    server = serve(messages)
    source = WebSocketSource(server.url, "zeek-1", topics=(TOPIC, "zeek.test", "/foo/bar"))
    try:
        items = read_until(source, 5)
    finally:
        source.close()
    rejected = [item for item in items if isinstance(item, Rejected)]
    assert [item for item in items if isinstance(item, PayloadHead)] == heads
    assert [r.reason for r in rejected] == [
        "event 'hello' is not HeadBits::payload_head",
        "event 'event_1' is not HeadBits::payload_head",
        "message data has type 'count', expected 'vector'",
    ]
    assert rejected[0].raw == docs.ZEEK_HELLO_EVENT.encode()
    assert all("message" in r.origin for r in rejected)
    assert source.counts["server_errors"] == 1
    assert "caf::pec::unexpected_character" in caplog.text


@pytest.mark.parametrize("kind", sorted(docs.VALUES))
def test_every_documented_value_type_in_a_wrong_place_is_rejected(serve, kind: str) -> None:
    """Each documented value as the `orig_seen` argument (a count): only a count decodes."""
    head = make_heads(1)[0]
    event = encode_event(head)
    value = docs.parse_value(docs.VALUES[kind])
    event["data"][2]["data"][1]["data"][6] = value
    message = orjson.dumps({"type": "data-message", "topic": TOPIC, **event})
    server = serve([(TOPIC, message)])
    source = WebSocketSource(server.url, "zeek-1")
    try:
        (item,) = read_until(source, 1)
    finally:
        source.close()
    if kind == "count":
        assert item.orig_bytes_seen == 123
    else:
        assert isinstance(item, Rejected)
        assert f"argument orig_seen has type '{kind}'" in item.reason


def test_malformed_frames_never_stop_the_source(serve) -> None:
    heads = make_heads(2)
    messages = [
        (TOPIC, b"How is it going?"),
        (TOPIC, b"[1, 2, 3]"),
        (TOPIC, b'{"type": "telemetry"}'),
        (TOPIC, b'{"type": "data-message", "topic": "x"}'),
        (TOPIC, b"\xff\xfe not utf-8"),
        *data_messages(heads, TOPIC),
    ]
    server = serve(messages)
    source = WebSocketSource(server.url, "zeek-1")
    try:
        items = read_until(source, 7)
    finally:
        source.close()
    reasons = [item.reason for item in items if isinstance(item, Rejected)]
    assert len(reasons) == 5
    assert reasons[0].startswith("not JSON")
    assert reasons[1] == "message is not a JSON object"
    assert reasons[2] == "unexpected message type 'telemetry'"
    assert "not a typed value" in reasons[3]
    assert [item for item in items if isinstance(item, PayloadHead)] == heads
    assert source.counts["rejected"] == 5


def test_reconnects_and_loses_nothing_the_server_sent(serve) -> None:
    heads = make_heads(2500)
    server = serve(data_messages(heads, TOPIC), disconnect_after=700)
    source = WebSocketSource(server.url, "zeek-1", reconnect_initial=0.05, reconnect_max=0.2)
    try:
        items = read_until(source, len(heads), timeout=30)
    finally:
        source.close()
    assert items == heads
    assert source.counts["connections"] == 4


def test_full_queue_stops_reading_the_socket(serve) -> None:
    heads = make_heads(200_000)
    server = serve(data_messages(heads, TOPIC))
    source = WebSocketSource(server.url, "zeek-1", capacity=1000)
    try:
        time.sleep(2.0)
        taken_while_stalled = server.server.cursor
        queued = source.counts["heads"]
        time.sleep(0.5)
        assert server.server.cursor == taken_while_stalled
        assert taken_while_stalled < len(heads) // 2
        assert len(source._handoff) == 1000
        assert queued - 1000 <= 2 * 4096
        assert read_until(source, 5000)[:5000] == heads[:5000]
    finally:
        source.close()


def test_an_unexpected_error_in_the_reader_is_logged_and_reconnects(serve, caplog,
                                                                    monkeypatch) -> None:
    """The reader thread once died silently on an exception it did not expect, and `read`
    returned [] for ever. An injected decoder bug must now be logged with its traceback and the
    source must reconnect and go on delivering."""
    from headbits.collector.sources import websocket

    real_decode = websocket.read_data_message
    calls = {"count": 0}

    def decode_with_one_bug(message, sensor):
        calls["count"] += 1
        if calls["count"] == 1:
            raise RuntimeError("injected decoder bug")
        return real_decode(message, sensor)

    monkeypatch.setattr(websocket, "read_data_message", decode_with_one_bug)
    # More than socket buffers hold, so the server still has heads to send after the reconnect
    # (it sends through one cursor shared by its connections).
    heads = make_heads(20_000)
    server = serve(data_messages(heads, TOPIC))
    source = WebSocketSource(server.url, "zeek-1", reconnect_initial=0.05)
    try:
        items = read_until(source, 100, timeout=20)
    finally:
        source.close()
    assert "unexpected error; reconnecting" in caplog.text
    assert "injected decoder bug" in caplog.text  # the traceback is in the log
    assert source.counts["connections"] >= 2
    assert items and set(items) <= set(heads)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_read_ends_the_source_once_the_reader_thread_is_gone(serve, monkeypatch) -> None:
    """Even what no handler may catch (SystemExit in the thread) ends in EndOfSource."""
    from headbits.collector.sources import websocket

    def exits(message, sensor):
        raise SystemExit("injected")

    monkeypatch.setattr(websocket, "read_data_message", exits)
    source = WebSocketSource(serve(data_messages(make_heads(10), TOPIC)).url, "zeek-1")
    try:
        with pytest.raises(EndOfSource):
            for _ in range(100):
                source.read(10, 0.1)
    finally:
        source.close()


def test_wss_with_a_custom_ca_through_the_collector_settings(tmp_path, caplog) -> None:
    """`wss://` to a sensor whose certificate a private CA signed: trusted through
    `tls_ca_file`, refused (certificate verify failed, logged) without it."""
    import ssl

    from headbits.collector.service import CollectorSettings, make_source
    from headbits.devtools.certificates import make_pki

    pki = make_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert_file, pki.server.key_file)
    heads = make_heads(50)
    server = RunningServer(WebSocketReplayServer(data_messages(heads, TOPIC)), ssl=context)
    try:
        assert server.url.startswith("wss://")
        untrusted = make_source(CollectorSettings(websocket_url=server.url, sensor="zeek-1"))
        try:
            assert read_until(untrusted, 1, timeout=3) == []
        finally:
            untrusted.close()
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        trusted = make_source(CollectorSettings(websocket_url=server.url, sensor="zeek-1",
                                                tls_ca_file=str(pki.ca_file)))
        try:
            assert read_until(trusted, len(heads)) == heads
        finally:
            trusted.close()
    finally:
        server.stop()
