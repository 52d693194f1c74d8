"""The package in a real multi-process Zeek cluster on loopback, started without zeekctl.

A manager and two workers (Broker backend, Zeek 8.0's default) get their layout from a
`cluster-layout.zeek` on ZEEKPATH and their role from CLUSTER_NODE, as zeekctl would give them.
Workers cannot sniff interfaces here, so each reads a capture with `-r` once it has joined the
manager (tests/zeek/cluster-worker.zeek). Every node loads the same site script, the one
zeek/README.md shows: only the manager listens. The collector's WebSocket source, connected to
the manager, must receive exactly the heads a standalone Zeek gives for each worker's capture.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from headbits.collector.sources.websocket import WebSocketSource
from headbits.devtools.loopback_server import free_port
from tests.zeek_support import (
    HOLD_SCRIPT,
    PACKAGE_SCRIPTS,
    PROJECT_ROOT,
    Zeek,
    dump_heads,
    require_zeek,
    wait_listening,
    wait_subscribed,
    zeek_env,
)

TRACES = PROJECT_ROOT / "zeek" / "tests" / "Traces"
WORKER_CAPTURES = {"worker-1": TRACES / "get-gzip.pcap", "worker-2": TRACES / "dns-caa.pcap"}
WORKER_SCRIPT = HOLD_SCRIPT.parent / "cluster-worker.zeek"

SITE = """\
redef HeadBits::websocket_port = {port}/tcp;
@if ( Cluster::local_node_type() == Cluster::MANAGER )
redef HeadBits::listen_in_cluster = T;
@endif
"""


def write_layout(folder: Path, manager_port: int, websocket_port: int) -> None:
    """cluster-layout.zeek (what zeekctl would write) and the site script, in `folder`."""
    folder.mkdir()
    workers = "".join(
        f'\t["{name}"] = [$node_type=Cluster::WORKER, $ip=127.0.0.1, $manager="manager"],\n'
        for name in WORKER_CAPTURES)
    (folder / "cluster-layout.zeek").write_text(
        "redef Cluster::nodes = {\n"
        f"\t[\"manager\"] = [$node_type=Cluster::MANAGER, $ip=127.0.0.1, $p={manager_port}/tcp],\n"
        f"{workers}}};\n")
    (folder / "site.zeek").write_text(SITE.format(port=websocket_port))


def node_env(zeek: Zeek, layout: Path, node: str) -> dict[str, str]:
    """A cluster node's variables: its name, and a ZEEKPATH that finds the layout."""
    return {"CLUSTER_NODE": node,
            "ZEEKPATH": zeek_env(zeek.home)["ZEEKPATH"] + os.pathsep + str(layout)}


def test_workers_heads_reach_the_collector_through_the_manager(tmp_path: Path,
                                                               monkeypatch) -> None:
    """Real Zeek's events, relayed by its manager, reach the WebSocket source whole; and every
    one of them is read by `read_data_message`'s expression, none parsed as JSON (the
    collector's benchmark figure holds for what Zeek writes, not only for the stand-in's)."""
    from headbits.collector.sources import websocket

    parsed = []
    json_reading = websocket.decode_event_row
    monkeypatch.setattr(websocket, "decode_event_row",
                        lambda event, sensor: parsed.append(event) or json_reading(event, sensor))
    zeek = require_zeek()
    expected = []
    for capture in WORKER_CAPTURES.values():
        expected += dump_heads(zeek, capture, tmp_path)
    assert {key[0] for key in expected} == {"tcp", "udp"}

    manager_port, websocket_port = free_port(), free_port()
    layout = tmp_path / "layout"
    write_layout(layout, manager_port, websocket_port)
    nodes = {}
    try:
        (tmp_path / "manager").mkdir()
        nodes["manager"] = zeek.start([str(PACKAGE_SCRIPTS), str(layout / "site.zeek")],
                                      tmp_path / "manager", node_env(zeek, layout, "manager"))
        wait_listening(websocket_port, nodes["manager"])
        wait_listening(manager_port, nodes["manager"])
        source = WebSocketSource(f"ws://127.0.0.1:{websocket_port}/v1/messages/json",
                                 "zeek-cluster")
        try:
            wait_subscribed(source)
            for name, capture in WORKER_CAPTURES.items():
                (tmp_path / name).mkdir()
                nodes[name] = zeek.start(
                    ["-C", "-r", str(capture), str(PACKAGE_SCRIPTS), str(layout / "site.zeek"),
                     str(WORKER_SCRIPT)], tmp_path / name, node_env(zeek, layout, name))
            heads = []
            deadline = time.monotonic() + 60
            while len(heads) < len(expected) and time.monotonic() < deadline:
                heads += source.read(100, 0.2)
            heads += source.read(100, 1.0)
        finally:
            source.close()
        # Each worker's options name the manager's WebSocket port: a worker that tried to
        # listen too would have stopped with the package's fatal error.
        for name, process in nodes.items():
            assert process.poll() is None, (
                f"{name} exited: {(tmp_path / name / 'zeek.err').read_text()}")
    finally:
        for process in nodes.values():
            if process.poll() is None:
                process.kill()
            process.wait(10)
    got = [(h.transport, h.orig_h, h.orig_p, h.resp_h, h.resp_p, h.orig_head, h.resp_head,
            h.orig_gap, h.resp_gap) for h in heads]
    assert sorted(got) == sorted(expected)
    assert source.counts["rejected"] == 0
    assert all(h.sensor == "zeek-cluster" for h in heads)
    assert parsed == [], f"{len(parsed)} events were parsed as JSON, e.g. {parsed[0]}"


def test_a_node_that_cannot_listen_stops_with_the_reason(tmp_path: Path) -> None:
    """listen_in_cluster on a worker whose port the manager already holds: the package checks
    the listen's return value and stops that worker, naming the address and port."""
    zeek = require_zeek()
    manager_port, websocket_port = free_port(), free_port()
    layout = tmp_path / "layout"
    write_layout(layout, manager_port, websocket_port)
    (tmp_path / "manager").mkdir()
    manager = zeek.start([str(PACKAGE_SCRIPTS), str(layout / "site.zeek")],
                         tmp_path / "manager", node_env(zeek, layout, "manager"))
    try:
        wait_listening(websocket_port, manager)
        (tmp_path / "worker").mkdir()
        worker = zeek.run(["-C", "-r", str(WORKER_CAPTURES["worker-1"]), str(PACKAGE_SCRIPTS),
                           str(layout / "site.zeek"), "HeadBits::listen_in_cluster=T"],
                          tmp_path / "worker", env=node_env(zeek, layout, "worker-1"))
    finally:
        manager.kill()
        manager.wait(10)
    assert worker.returncode != 0
    assert (f"headbits: cannot listen for WebSocket clients on 127.0.0.1:{websocket_port}/tcp"
            in worker.stderr)
