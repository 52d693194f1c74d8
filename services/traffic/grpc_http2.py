"""gRPC over cleartext HTTP/2: grpcio's client and server (connection preface, SETTINGS, ...).

Clients vary the method called, metadata, the user agent, HTTP/2 settings grpcio exposes
and payload sizes. Zeek has no built-in HTTP/2 analyzer; with MITRE's HTTP2 analyzer plugin
(MITRECND/bro-http2) conn.log names the service "http2", the label recorded here.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc

from headbits.traffic.base import Address, TrafficProtocol
from headbits.traffic.servers import LOOPBACK

SERVICES = ("inventory.v1.Inventory", "payments.Payments", "telemetry.Collector",
            "auth.v2.Tokens", "search.Index")
METHODS = ("Get", "List", "Create", "Update", "Report", "Check")
USER_AGENTS = ("grpc-go/1.64.0", "grpc-java-netty/1.63.0", "grpc-node-js/1.10.8",
               "grpc-dotnet/2.62.0", "")
FRAME_SIZES = (16384, 32768, 65536)


@dataclass(frozen=True)
class GrpcPlan:
    method: str
    metadata: tuple[tuple[str, str], ...]
    user_agent: str
    max_frame_size: int
    payload_bytes: int
    calls: int
    transport: str = "tcp"


def plan(rng: random.Random) -> GrpcPlan:
    metadata = [("x-request-id", f"{rng.getrandbits(64):016x}")]
    if rng.random() < 0.5:
        metadata.append(("authorization", f"Bearer {rng.getrandbits(96):024x}"))
    return GrpcPlan(
        method=f"/{rng.choice(SERVICES)}/{rng.choice(METHODS)}",
        metadata=tuple(metadata),
        user_agent=rng.choice(USER_AGENTS),
        max_frame_size=rng.choice(FRAME_SIZES),
        payload_bytes=rng.randint(0, 2048),
        calls=rng.randint(1, 3),
    )


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request[::-1]


class _AnyMethod(grpc.GenericRpcHandler):
    """Answers every method with bytes in, bytes out: the framing is what matters."""

    def service(self, handler_call_details):
        return grpc.unary_unary_rpc_method_handler(_echo)


@contextlib.contextmanager
def serve(rng: random.Random) -> Iterator[dict[str, Address]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[_AnyMethod()])
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        yield {"tcp": (LOOPBACK, port)}
    finally:
        server.stop(grace=None)


def talk(session: GrpcPlan, address: Address) -> int:
    """Returns how many calls were answered."""
    options = [("grpc.http2.max_frame_size", session.max_frame_size),
               ("grpc.enable_http_proxy", 0)]
    if session.user_agent:
        options.append(("grpc.primary_user_agent", session.user_agent))
    answered = 0
    with grpc.insecure_channel(f"ipv4:{address[0]}:{address[1]}", options=options) as channel:
        call = channel.unary_unary(session.method)
        for number in range(session.calls):
            request = bytes([number % 256]) * session.payload_bytes
            answered += call(request, metadata=session.metadata, timeout=10) == request[::-1]
    return answered


PROTOCOL = TrafficProtocol("grpc", 50051, ("http2",), serve, plan, talk)
