"""WebSocket: the `websockets` package on both sides (HTTP/1.1 Upgrade, then frames).

Clients vary the Host, path, Origin, subprotocol offers, user agent, the permessage-deflate
offer and the messages sent. Zeek (7.0+) logs such a flow as services "http" and "websocket".
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from websockets.asyncio.server import serve as websocket_serve
from websockets.sync.client import connect

from headbits.traffic import names
from headbits.traffic.base import Address, TrafficProtocol
from headbits.traffic.servers import LOOPBACK, event_loop_thread

PATHS = ("/ws", "/socket", "/chat", "/live", "/stream", "/socket.io/?EIO=4&transport=websocket",
         "/graphql", "/updates")
SUBPROTOCOLS = ("chat", "graphql-ws", "wamp.2.json", "mqtt", "v1.stream")


@dataclass(frozen=True)
class WebSocketPlan:
    host: str
    path: str
    origin: str | None
    subprotocols: tuple[str, ...]
    user_agent: str
    compression: bool
    messages: tuple[str, ...]
    transport: str = "tcp"


def plan(rng: random.Random) -> WebSocketPlan:
    host = names.host_name(rng)
    return WebSocketPlan(
        host=host,
        path=rng.choice(PATHS),
        origin=f"https://{host}" if rng.random() < 0.7 else None,
        subprotocols=tuple(rng.sample(SUBPROTOCOLS, rng.randint(0, 2))),
        user_agent=rng.choice(names.USER_AGENTS),
        compression=rng.random() < 0.5,
        messages=tuple(f'{{"op": "subscribe", "topic": "{names.user_name(rng)}"}}'
                       for _ in range(rng.randint(1, 4))),
    )


async def _echo(connection) -> None:
    async for message in connection:
        await connection.send(message)


def _first_offered(connection, offered):
    """Servers pick one of the client's subprotocols, and accept clients that offer none."""
    return offered[0] if offered else None


@contextlib.contextmanager
def serve(rng: random.Random) -> Iterator[dict[str, Address]]:
    with event_loop_thread() as loop:

        async def start():
            return await websocket_serve(_echo, LOOPBACK, 0, select_subprotocol=_first_offered)

        server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        try:
            yield {"tcp": next(iter(server.sockets)).getsockname()[:2]}
        finally:
            server.close()
            asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(10)


def talk(session: WebSocketPlan, address: Address) -> int:
    """Returns how many echoes came back."""
    echoes = 0
    with connect(
        f"ws://{session.host}{session.path}",
        sock=socket.create_connection(address, timeout=10),
        origin=session.origin,
        subprotocols=list(session.subprotocols) or None,
        user_agent_header=session.user_agent,
        compression="deflate" if session.compression else None,
        proxy=None,
        open_timeout=10,
    ) as client:
        for message in session.messages:
            client.send(message)
            echoes += client.recv(timeout=10) == message
    return echoes


PROTOCOL = TrafficProtocol("websocket", 80, ("http", "websocket"), serve, plan, talk)
