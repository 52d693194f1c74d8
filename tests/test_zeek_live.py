"""The real Zeek publishing to the collector: WebSocket and native Broker, heads into Kafka.

Zeek reads a capture with the package loaded, held until the collector has subscribed
(tests/zeek/hold.zeek); the collector runs as the real service process and writes to the real
Kafka the suite starts. What arrives in Kafka must be exactly what Zeek published, which the
publish_policy hook prints in a second, subscriber-less run of the same capture (dump.zeek).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from headbits.collector.sources.websocket import WebSocketSource
from headbits.devtools.harness import ServiceProcess, Topics, read_topic
from headbits.devtools.loopback_server import free_port
from tests.zeek_support import (
    Control,
    dump_heads,
    held_zeek,
    require_zeek,
    wait_subscribed,
    write_udp_capture,
)

CAPTURES = ("zeek-traces/wikipedia.pcap",)


def head_key(record: dict) -> tuple:
    return (record["transport"], record["orig_h"], record["orig_p"], record["resp_h"],
            record["resp_p"], record["orig_head"], record["resp_head"], record["orig_gap"],
            record["resp_gap"])


def wait_for_log(service: ServiceProcess, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in service.log_path.read_text(errors="replace"):
            return
        if service.process.poll() is not None:
            raise AssertionError(f"{service.verb} exited:\n{service.log_tail()}")
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in the {service.verb} log:\n{service.log_tail()}")


@pytest.mark.kafka
@pytest.mark.shared_data
@pytest.mark.parametrize("source", ["websocket", "broker"])
@pytest.mark.parametrize("capture", CAPTURES)
def test_real_zeek_heads_reach_kafka(kafka_bootstrap, shared_pcaps: Path, tmp_path: Path,
                                     source: str, capture: str) -> None:
    zeek = require_zeek()
    path = shared_pcaps / capture
    expected = dump_heads(zeek, path, tmp_path)
    assert len(expected) >= 10, "the capture should give a good number of heads"
    assert {key[0] for key in expected} == {"tcp", "udp"}

    topics = Topics(kafka_bootstrap)
    port = free_port()
    broker_port = free_port() if source == "broker" else None
    env = dict(topics.env)
    if source == "websocket":
        args = ("--source", "websocket", "--websocket-url",
                f"ws://127.0.0.1:{port}/v1/messages/json")
        ready = "subscribed to"
    else:
        # The collector uses Zeek's own Broker bindings, the version this Zeek speaks.
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(zeek.python_dir), os.environ.get("PYTHONPATH")]))
        args = ("--source", "broker", "--broker-address", f"127.0.0.1:{broker_port}",
                "--broker-disable-tls", "true")
        ready = "peer_added"
    zeek_dir = tmp_path / "zeek"
    zeek_dir.mkdir()
    with held_zeek(zeek, path, zeek_dir, port=port, broker_port=broker_port):
        collector = ServiceProcess("collector", env, tmp_path, *args, "--sensor", "zeek-test")
        try:
            wait_for_log(collector, ready)
            control = Control(port)
            control.go()
            control.wait_file_done()
            control.close()
            records = read_topic(topics.settings, topics["heads"], "payload_head",
                                 lambda got: len(got) >= len(expected), timeout=60)
            time.sleep(1.0)
            records += read_topic(topics.settings, topics["heads"], "payload_head",
                                  lambda got: False, timeout=2)[len(records):]
        finally:
            assert collector.stop(signal.SIGTERM) == 0, collector.log_tail()
    assert sorted(head_key(r) for r in records) == sorted(expected)
    assert all(r["sensor"] == "zeek-test" for r in records)
    assert len({r["uid"] for r in records}) == len(records)
    dead = read_topic(topics.settings, topics["deadletter"], "deadletter", lambda got: False,
                      timeout=2)
    assert dead == []


def test_slow_subscriber_disconnect_is_told(tmp_path: Path) -> None:
    """Zeek 8.0 does not wait for a WebSocket subscriber that stops reading: past its buffer
    it drops the connection, and what it had queued is lost. The source, whose queue is full so
    it stops reading, must say so once it reads again (count, close code, metric)."""
    zeek = require_zeek()
    path = tmp_path / "burst.pcap"
    write_udp_capture(path, 20_000)
    registry = CollectorRegistry()
    port = free_port()
    with held_zeek(zeek, path, tmp_path, port=port):
        source = WebSocketSource(f"ws://127.0.0.1:{port}/v1/messages/json", "zeek-test",
                                 capacity=1, registry=registry, reconnect_initial=0.1)
        try:
            control = Control(port)
            wait_subscribed(source)
            control.go()
            control.wait_file_done()
            time.sleep(10)
            items = []
            last = time.monotonic()
            while time.monotonic() - last < 3:
                batch = source.read(5000, 0.2)
                if batch:
                    items += batch
                    last = time.monotonic()
            control.close()
        finally:
            source.close()
    assert len(items) < 20_000
    assert source.counts["disconnects"] >= 1
    assert sum(source.close_codes.values()) == source.counts["disconnects"]
    exported = generate_latest(registry).decode()
    assert 'headbits_zeek_link_events_total{event="close_' in exported
