"""Running the real Zeek with the headbits package, for the tests that need it.

Zeek is found at `$HEADBITS_ZEEK_HOME` (the unpacked install tree; `.ci/run` unpacks the shared
Zeek build and sets it), else in the cache folder `.ci/run` unpacks into, else at
`/opt/zeek-8.0.10`. Tests that need it skip with the reason when none is there; in CI it is
always there because `.ci/run` fails without it.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dpkt
import orjson
import pytest
from websockets.sync.client import connect

from headbits.collector.pcap import read_capture
from headbits.collector.sources.base import Source, SourceItem

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_SCRIPTS = PROJECT_ROOT / "zeek" / "scripts"
HOLD_SCRIPT = Path(__file__).resolve().parent / "zeek" / "hold.zeek"
ZEEK_VERSION_DIR = "zeek-8.0.10"


def zeek_home() -> Path | None:
    """The Zeek install tree to use, or None when there is none."""
    configured = os.environ.get("HEADBITS_ZEEK_HOME")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "headbits" / "zeek"
    candidates = [Path(configured)] if configured else []
    candidates += [cache / ZEEK_VERSION_DIR, Path("/opt") / ZEEK_VERSION_DIR]
    for candidate in candidates:
        if (candidate / "bin" / "zeek").is_file():
            return candidate
    return None


def zeek_env(home: Path) -> dict[str, str]:
    """The variables `zeek-env.sh` sets, for a tree unpacked anywhere."""
    share = home / "share" / "zeek"
    env = dict(os.environ)
    env["ZEEKPATH"] = ":".join(
        [".", str(share), str(share / "policy"), str(share / "site"),
         str(share / "builtin-plugins")])
    env["ZEEK_PLUGIN_PATH"] = str(home / "lib" / "zeek" / "plugins")
    env["ZEEK_HOME"] = str(home)
    return env


@dataclass(frozen=True)
class Zeek:
    home: Path

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "zeek"

    @property
    def python_dir(self) -> Path:
        """Zeek's own Broker Python bindings (the `broker` package lives here)."""
        return self.home / "lib" / "zeek" / "python"

    def version(self) -> str:
        out = subprocess.run([str(self.binary), "--version"], env=zeek_env(self.home),
                             capture_output=True, text=True, check=True).stdout
        return out.split()[-1]

    def run(self, args: list[str], cwd: Path, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), *args], cwd=cwd,
                              env={**zeek_env(self.home), **(env or {})},
                              capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, args: list[str], cwd: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Zeek in the background; its output goes to `cwd`/zeek.out and zeek.err (files, so
        a full pipe can never stall it). `env` adds variables (a cluster node's CLUSTER_NODE)."""
        with (cwd / "zeek.out").open("w") as out, (cwd / "zeek.err").open("w") as err:
            return subprocess.Popen([str(self.binary), *args], cwd=cwd,
                                    env={**zeek_env(self.home), **(env or {})},
                                    stdout=out, stderr=err)


def require_zeek() -> Zeek:
    home = zeek_home()
    if home is None:
        pytest.skip("no Zeek found: set HEADBITS_ZEEK_HOME to an unpacked Zeek, or run .ci/run, "
                    "which unpacks ../shared/tools/zeek/")
    return Zeek(home)


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    """Return once something accepts TCP connections on loopback `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"Zeek exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


@contextmanager
def held_zeek(zeek: Zeek, capture: Path, cwd: Path, *, port: int, broker_port: int | None = None,
              extra: tuple[str, ...] = ()) -> Iterator[subprocess.Popen]:
    """Zeek reading `capture` with the package, held until `send_go` (hold.zeek).

    The WebSocket server listens on `port`; with `broker_port` the native Broker listener
    (TLS off) listens there too. The process is killed when the block ends if still running.
    """
    listen = [f"HeadBits::websocket_port={port}/tcp"]
    if broker_port is not None:
        listen += ["HeadBits::listen_broker=T", f"HeadBits::broker_port={broker_port}/tcp",
                   "Broker::disable_ssl=T"]
    process = zeek.start(["-C", "-r", str(capture), str(PACKAGE_SCRIPTS), str(HOLD_SCRIPT),
                          *listen, *extra], cwd)
    try:
        wait_listening(port, process)
        if broker_port is not None:
            wait_listening(broker_port, process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


GO_MESSAGE = orjson.dumps({
    "type": "data-message", "topic": "headbits/test", "@data-type": "vector", "data": [
        {"@data-type": "count", "data": 1}, {"@data-type": "count", "data": 1},
        {"@data-type": "vector", "data": [
            {"@data-type": "string", "data": "HeadBits::Test::go"},
            {"@data-type": "vector", "data": []}]}]})


def wait_subscribed(source: Source, timeout: float = 30) -> None:
    """Wait until `source` (WebSocket or Broker) has connected to Zeek."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if source.counts.get("connections") or source.counts.get("peer_events"):
            return
        assert source.read(0, 0.05) == []
    raise AssertionError(f"the source never connected: {source.counts}")


class Control:
    """The test's own WebSocket client of a held Zeek: releases it and hears the file end."""

    def __init__(self, port: int) -> None:
        self._client = connect(f"ws://127.0.0.1:{port}/v1/messages/json")
        self._client.send('["headbits/test"]')
        ack = orjson.loads(self._client.recv(10))
        assert ack["type"] == "ack", ack

    def go(self) -> None:
        self._client.send(GO_MESSAGE.decode())

    def wait_file_done(self, timeout: float = 120) -> None:
        message = orjson.loads(self._client.recv(timeout))
        name = message["data"][2]["data"][0]["data"]
        assert name == "HeadBits::Test::file_done", message

    def close(self) -> None:
        self._client.close()


def collect_heads(source: Source, control: Control, quiet: float = 0.5,
                  timeout: float = 120) -> list[SourceItem]:
    """Release Zeek, then read `source` until the capture is done and `quiet` seconds passed
    without another item (the package publishes pending heads at the end of the file, just
    before hold.zeek announces it)."""
    wait_subscribed(source)
    control.go()
    control.wait_file_done(timeout)
    items: list[SourceItem] = []
    last = time.monotonic()
    while time.monotonic() - last < quiet:
        batch = source.read(1000, 0.05)
        if batch:
            items += batch
            last = time.monotonic()
    return items


DUMP_SCRIPT = HOLD_SCRIPT.parent / "dump.zeek"

HeadKey = tuple[str, str, int, str, int, bytes, bytes, bool, bool]
"""(transport, orig_h, orig_p, resp_h, resp_p, orig_head, resp_head, orig_gap, resp_gap)."""


def dump_heads(zeek: Zeek, capture: Path, cwd: Path) -> list[HeadKey]:
    """Every head the package publishes for `capture`, from its publish_policy hook (dump.zeek),
    in a Zeek run without a listener (which ends by itself at the end of the file)."""
    result = zeek.run(["-C", "-r", str(capture), str(PACKAGE_SCRIPTS), str(DUMP_SCRIPT)], cwd)
    if result.returncode != 0:
        raise AssertionError(f"zeek failed on {capture}: {result.stderr[-2000:]}")
    heads = []
    for line in result.stdout.splitlines():
        fields = line.split(" ")
        if len(fields) != 9:
            raise AssertionError(f"unexpected output line from dump.zeek: {line!r}")
        transport, orig_h, orig_p, resp_h, resp_p, orig_head, resp_head, orig_gap, resp_gap = (
            fields)
        heads.append((transport, orig_h, int(orig_p), resp_h, int(resp_p),
                      base64.b64decode(orig_head), base64.b64decode(resp_head), orig_gap == "T",
                      resp_gap == "T"))
    return heads


def project_heads(capture: Path) -> list[HeadKey]:
    """The same keys from the project's own reassembly (what `headbits replay` sends)."""
    return [(h.transport, h.orig_h, h.orig_p, h.resp_h, h.resp_p, h.orig_head, h.resp_head,
             h.orig_gap, h.resp_gap) for h in read_capture(capture).heads]


def write_udp_capture(path: Path, connections: int) -> None:
    """A capture of `connections` UDP request/answer pairs to port 5353, one second apart in
    blocks of 1000: Zeek keeps them all open until the file ends, then publishes their heads in
    one burst (what overwhelms a subscriber that stopped reading)."""
    with path.open("wb") as stream:
        writer = dpkt.pcap.Writer(stream)
        for i in range(connections):
            client = socket.inet_aton(f"10.{1 + i // 65000}.{(i // 250) % 260 % 256}.{1 + i % 250}")
            server = socket.inet_aton("192.0.2.53")
            for src, dst, sport, dport, payload in (
                (client, server, 20000 + i % 40000, 5353, b"Q" * 40 + i.to_bytes(4, "big")),
                (server, client, 5353, 20000 + i % 40000, b"A" * 60 + i.to_bytes(4, "big")),
            ):
                udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
                udp.ulen = len(udp)
                ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_UDP, data=udp)
                ip.len = len(ip)
                frame = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip)
                writer.writepkt(bytes(frame), ts=1_700_000_000 + i / 1000)


def _swapped(key: HeadKey) -> HeadKey:
    transport, orig_h, orig_p, resp_h, resp_p, orig_head, resp_head, orig_gap, resp_gap = key
    return (transport, resp_h, resp_p, orig_h, orig_p, resp_head, orig_head, resp_gap, orig_gap)


def compare_heads(zeek: list[HeadKey], project: list[HeadKey]) -> Counter[str]:
    """How Zeek's heads of one capture relate to the project's, one count per Zeek head that
    matches or differs, and per project head Zeek does not have (zeek/README.md explains each):

    identical, roles_swapped (same connection, originator and responder the other way round),
    project_gap_only (same bytes, only the project sets a gap flag), gap_differs (same bytes,
    other gap flag differences), bytes_differ (same connection, other bytes), zeek_split (one
    more Zeek head of a 5-tuple the project has fewer connections of), zeek_only, project_only.
    """
    outcome: Counter[str] = Counter()
    remaining = Counter(project)
    unmatched = []
    for head in zeek:
        if remaining[head] > 0:
            remaining[head] -= 1
            outcome["identical"] += 1
        elif remaining[_swapped(head)] > 0:
            remaining[_swapped(head)] -= 1
            outcome["roles_swapped"] += 1
        else:
            unmatched.append(head)
    by_connection: dict[tuple, list[HeadKey]] = {}
    for head, count in remaining.items():
        by_connection.setdefault(head[:5], []).extend([head] * count)
    project_tuples = {head[:5] for head in project} | {_swapped(head)[:5] for head in project}
    for head in unmatched:
        candidates = by_connection.get(head[:5]) or by_connection.get(_swapped(head)[:5])
        if not candidates:
            outcome["zeek_split" if head[:5] in project_tuples else "zeek_only"] += 1
            continue
        other = candidates.pop(0)
        if other[:5] != head[:5]:
            other = _swapped(other)
        if other[5:7] != head[5:7]:
            outcome["bytes_differ"] += 1
        elif (other[7] or not head[7]) and (other[8] or not head[8]):
            outcome["project_gap_only"] += 1
        else:
            outcome["gap_differs"] += 1
    left = sum(len(heads) for heads in by_connection.values())
    if left:
        outcome["project_only"] += left
    return outcome
