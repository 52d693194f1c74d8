"""Recording relays: the capture point between a real client and a real server.

A client connects to the relay, which forwards every byte to the server and back and records,
per direction, the first `MAX_HEAD_BYTES` of the stream and the number of bytes seen. The relay
is the responder the client talked to, so the 5-tuple it records (the accepted peer and its own
listening address) is the connection's true one: nothing is invented. UDP flows are keyed by the
client's address and port, and their head is the first datagrams' payload, as Zeek's
`udp_contents` sees it.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from dataclasses import dataclass, field

from headbits.common.records import MAX_HEAD_BYTES

IDLE_TIMEOUT_S = 15.0
"""A direction silent this long is treated as closed, so a stuck peer cannot hang a run."""


class RelayError(RuntimeError):
    """A flow did not finish in time; the message names the relay and how many flows are open."""


@dataclass
class Direction:
    """One direction of a flow as the relay saw it."""

    head: bytearray = field(default_factory=bytearray)
    bytes_seen: int = 0

    def record(self, payload: bytes) -> None:
        room = MAX_HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += payload[:room]
        self.bytes_seen += len(payload)


@dataclass
class Flow:
    """One relayed connection: true endpoints, start time and what each direction carried."""

    transport: str
    ts: float
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    orig: Direction = field(default_factory=Direction)
    resp: Direction = field(default_factory=Direction)
    done: threading.Event = field(default_factory=threading.Event)


def random_loopback_host(rng: random.Random) -> str:
    """A 127.x.y.z address other than 127.0.0.1, so relays of parallel runs rarely collide."""
    return f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def bind_preferring(kind: int, host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or to an ephemeral port on host when that is refused.

    Well-known ports need root and may be taken; the flow's resp_p is then the port really used.
    """
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.bind((host, 0))
    return sock


class _Relay:
    """Bookkeeping shared by both transports: the flows opened since the last `collect`."""

    transport = ""

    def __init__(self, sock: socket.socket, upstream: tuple[str, int]) -> None:
        self._sock = sock
        self._upstream = upstream
        self._flows: list[Flow] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.address: tuple[str, int] = sock.getsockname()

    def _new_flow(self, peer: tuple[str, int]) -> Flow:
        flow = Flow(self.transport, time.time(), peer[0], peer[1], *self.address)
        with self._lock:
            self._flows.append(flow)
        return flow

    def collect(self, timeout: float = IDLE_TIMEOUT_S * 2) -> list[Flow]:
        """Flows opened since the last call, once each has finished, oldest first."""
        with self._lock:
            flows, self._flows = self._flows, []
        deadline = time.monotonic() + timeout
        for flow in flows:
            if not flow.done.wait(max(0.0, deadline - time.monotonic())):
                raise RelayError(
                    f"{self.transport} relay {self.address}: a flow from "
                    f"{flow.orig_h}:{flow.orig_p} did not finish within {timeout:.0f} s"
                )
        return flows

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.close()


class TcpRelay(_Relay):
    transport = "tcp"

    def __init__(self, upstream: tuple[str, int], host: str, port: int) -> None:
        super().__init__(bind_preferring(socket.SOCK_STREAM, host, port), upstream)
        self._sock.listen(64)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, peer = self._sock.accept()
            except OSError:
                return
            flow = self._new_flow(peer)
            threading.Thread(target=self._relay, args=(client, flow), daemon=True).start()

    def _relay(self, client: socket.socket, flow: Flow) -> None:
        try:
            server = socket.create_connection(self._upstream, timeout=IDLE_TIMEOUT_S)
        except OSError:
            client.close()
            flow.done.set()
            return
        client.settimeout(IDLE_TIMEOUT_S)
        upstream_pump = threading.Thread(target=_pump, args=(server, client, flow.resp))
        upstream_pump.start()
        _pump(client, server, flow.orig)
        upstream_pump.join()
        client.close()
        server.close()
        flow.done.set()


def _pump(source: socket.socket, sink: socket.socket, direction: Direction) -> None:
    """Copy source to sink until EOF, recording on the way, then half-close the sink."""
    while True:
        try:
            payload = source.recv(65536)
        except OSError:
            payload = b""
        if not payload:
            break
        direction.record(payload)
        try:
            sink.sendall(payload)
        except OSError:
            break
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class UdpRelay(_Relay):
    """Each client address gets its own upstream socket, so replies find their way back."""

    transport = "udp"

    def __init__(self, upstream: tuple[str, int], host: str, port: int) -> None:
        super().__init__(bind_preferring(socket.SOCK_DGRAM, host, port), upstream)
        self._upstream_socks: dict[tuple[str, int], tuple[socket.socket, Flow]] = {}
        threading.Thread(target=self._receive_loop, daemon=True).start()

    def _receive_loop(self) -> None:
        while not self._closed.is_set():
            try:
                payload, peer = self._sock.recvfrom(65536)
            except OSError:
                return
            if peer not in self._upstream_socks:
                upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                upstream.connect(self._upstream)
                flow = self._new_flow(peer)
                self._upstream_socks[peer] = (upstream, flow)
                threading.Thread(
                    target=self._reply_loop, args=(upstream, peer, flow), daemon=True
                ).start()
            upstream, flow = self._upstream_socks[peer]
            flow.orig.record(payload)
            with contextlib.suppress(OSError):
                upstream.send(payload)

    def _reply_loop(self, upstream: socket.socket, peer: tuple[str, int], flow: Flow) -> None:
        while True:
            try:
                payload = upstream.recv(65536)
            except OSError:
                return
            flow.resp.record(payload)
            flow.done.set()
            with contextlib.suppress(OSError):
                self._sock.sendto(payload, peer)

    def collect(self, timeout: float = IDLE_TIMEOUT_S * 2) -> list[Flow]:
        """UDP has no close: a flow is finished once its reply was relayed; sockets are freed."""
        flows = super().collect(timeout)
        for flow in flows:
            upstream, _ = self._upstream_socks.pop((flow.orig_h, flow.orig_p))
            upstream.close()
        return flows


@contextlib.contextmanager
def relay(transport: str, upstream: tuple[str, int], host: str, port: int):
    """A running relay for `transport` in front of `upstream`, listening on (host, port)."""
    kind = TcpRelay if transport == "tcp" else UdpRelay
    running = kind(upstream, host, port)
    try:
        yield running
    finally:
        running.close()

