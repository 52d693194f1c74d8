"""Thin harnesses that run real servers on loopback in background threads for one run.

Every server listens on 127.0.0.1 with an ephemeral port; clients never reach it directly but
through a recording relay (see `relay`). Server-side failures are not printed: the client of the
same session fails loudly, with the session's plan in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator

LOOPBACK = "127.0.0.1"


class _QuietThreadingTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        """The client of the session reports the failure."""


@contextlib.contextmanager
def serve_tcp(handle: Callable[[socket.socket], None]) -> Iterator[tuple[str, int]]:
    """Run `handle(connection)` for every accepted connection; yields the listening address."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            handle(self.request)

    server = _QuietThreadingTCPServer((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def serve_udp(answer: Callable[[bytes], bytes]) -> Iterator[tuple[str, int]]:
    """Reply to every datagram with `answer(datagram)`; yields the listening address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))

    def loop() -> None:
        while True:
            try:
                datagram, peer = sock.recvfrom(65536)
                sock.sendto(answer(datagram), peer)
            except OSError:
                return
            except Exception:
                continue

    threading.Thread(target=loop, daemon=True).start()
    try:
        yield sock.getsockname()
    finally:
        sock.close()


@contextlib.contextmanager
def event_loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An asyncio loop running in a daemon thread, for servers that only come in asyncio form."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def free_port() -> int:
    """A currently free loopback port, for servers that cannot report the one they bound."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]
