"""An unknown binary protocol: random bytes both ways over a real TCP connection.

Only used for anomalies: it stands for the custom C2 channel or tunnel a detector should flag.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from headbits.traffic.base import Address, TrafficProtocol
from headbits.traffic.servers import serve_tcp


@dataclass(frozen=True)
class NoisePlan:
    request_bytes: int
    transport: str = "tcp"


def plan(rng: random.Random) -> NoisePlan:
    return NoisePlan(request_bytes=rng.randint(16, 512))


def _handle(connection: socket.socket) -> None:
    if connection.recv(65536):
        connection.sendall(os.urandom(int.from_bytes(os.urandom(1)) + 16))


@contextlib.contextmanager
def serve(rng: random.Random) -> Iterator[dict[str, Address]]:
    with serve_tcp(_handle) as address:
        yield {"tcp": address}


def talk(session: NoisePlan, address: Address) -> int:
    """Returns how many random bytes the server sent back."""
    with socket.create_connection(address, timeout=10) as connection:
        connection.sendall(os.urandom(session.request_bytes))
        connection.shutdown(socket.SHUT_WR)
        received = 0
        while chunk := connection.recv(65536):
            received += len(chunk)
        return received


PROTOCOL = TrafficProtocol("noise", 80, (), serve, plan, talk)
