"""Native Broker source against a real Broker endpoint (Debian's python3-broker) publishing the
events the Zeek script publishes. Skips only when the bindings are absent (.ci/run installs them
and links them with scripts/link-broker.sh)."""

from __future__ import annotations

import time

import pytest

broker = pytest.importorskip("broker", reason="Broker's Python bindings: scripts/link-broker.sh")

from headbits.collector.sources.base import Rejected  # noqa: E402
from headbits.collector.sources.broker import (  # noqa: E402
    BrokerSource,
    BrokerTLS,
    _converters,
    from_typed,
    make_endpoint,
    to_typed,
)
from headbits.collector.zeek_event import DEFAULT_TOPIC, encode_event  # noqa: E402
from tests.data import zeek_websocket_api_examples as docs  # noqa: E402
from tests.source_helpers import make_heads, read_until  # noqa: E402

TLS_OFF = BrokerTLS(disable=True)


def wait_for_subscriber(endpoint, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(str(topic) == DEFAULT_TOPIC for topic in endpoint.peer_subscriptions()):
            return
        time.sleep(0.05)
    raise AssertionError("the collector never peered")


def publish(endpoint, heads) -> None:
    for head in heads:
        endpoint.publish(DEFAULT_TOPIC, broker.Data(from_typed(encode_event(head))))


def test_all_events_arrive_decoded_exactly() -> None:
    zeek = make_endpoint(TLS_OFF)
    port = zeek.listen("127.0.0.1", 0)
    source = BrokerSource("127.0.0.1", port, "zeek-1", tls=TLS_OFF, queue_size=500)
    try:
        wait_for_subscriber(zeek)
        heads = make_heads(3000)
        publish(zeek, heads)
        assert read_until(source, len(heads)) == heads
        assert source.read(10, 0.3) == []
        assert source.counts["heads"] == 3000
    finally:
        source.close()
        zeek.shutdown()


def test_peer_loss_and_reconnect_lose_nothing_delivered() -> None:
    first = make_endpoint(TLS_OFF)
    port = first.listen("127.0.0.1", 0)
    source = BrokerSource("127.0.0.1", port, "zeek-1", tls=TLS_OFF, retry=1.0)
    try:
        wait_for_subscriber(first)
        before = make_heads(1000)
        publish(first, before)
        received = read_until(source, len(before))
        first.shutdown()
        time.sleep(0.5)
        second = make_endpoint(TLS_OFF)
        assert second.listen("127.0.0.1", port) == port
        wait_for_subscriber(second, timeout=20)
        after = make_heads(1000, start=1000)
        publish(second, after)
        received += read_until(source, len(after))
        second.shutdown()
    finally:
        source.close()
    assert received == before + after
    assert source.counts["peer_events"] >= 2


def test_malformed_events_are_rejected_with_the_raw_event() -> None:
    zeek = make_endpoint(TLS_OFF)
    port = zeek.listen("127.0.0.1", 0)
    source = BrokerSource("127.0.0.1", port, "zeek-1", tls=TLS_OFF)
    try:
        wait_for_subscriber(zeek)
        good = make_heads(1)[0]
        wrong_name = broker.zeek.Event("Other::event", "x")
        short = encode_event(good)
        short["data"][2]["data"][1]["data"].pop()
        bad_base64 = encode_event(good)
        bad_base64["data"][2]["data"][1]["data"][4]["data"] = "***"
        zeek.publish(DEFAULT_TOPIC, broker.Data(wrong_name))
        zeek.publish(DEFAULT_TOPIC, broker.Data(from_typed(short)))
        zeek.publish(DEFAULT_TOPIC, broker.Data(from_typed(bad_base64)))
        zeek.publish(DEFAULT_TOPIC, broker.Data(broker.Count(7)))
        publish(zeek, [good])
        items = read_until(source, 5)
    finally:
        source.close()
        zeek.shutdown()
    reasons = [item.reason for item in items[:4]]
    assert all(isinstance(item, Rejected) for item in items[:4])
    assert reasons[0] == "event 'Other::event' is not HeadBits::payload_head"
    assert reasons[1] == "HeadBits::payload_head has 10 arguments, expected 11"
    assert reasons[2].startswith("argument orig_head is not valid base64")
    assert reasons[3] == "message data has type 'count', expected 'vector'"
    assert b"Other::event" in items[0].raw
    assert items[4] == good


@pytest.mark.parametrize("kind", sorted(docs.VALUES))
def test_documented_values_survive_broker_conversion(kind: str) -> None:
    value = docs.parse_value(docs.VALUES[kind])
    converted = to_typed(broker.Data(from_typed(value)), _converters(broker))
    assert converted["@data-type"] == kind
    if kind == "set":
        assert sorted(item["data"] for item in converted["data"]) == ["bar", "foo"]
    elif kind == "table":
        pairs = sorted((e["key"]["data"], e["value"]["data"]) for e in converted["data"])
        assert pairs == [("first-name", "John"), ("last-name", "Doe")]
    elif kind == "timespan":
        assert converted["data"] == "1500000000ns"
    else:
        assert converted == value
