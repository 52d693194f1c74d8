"""TLS 1.2 and 1.3: Python's `ssl` (OpenSSL) on both sides, an HTTP request inside.

Clients vary what browsers, libraries and bots vary: SNI (or none, as clients of bare IPs do),
ALPN offers, the TLS 1.2 suites offered and their order, and the version range (1.2 only,
1.3 only, or both). OpenSSL always offers its TLS 1.3 suites; Python cannot reorder them.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from headbits.traffic import names
from headbits.traffic.base import Address, TrafficProtocol
from headbits.traffic.credentials import tls_certificate_files
from headbits.traffic.servers import serve_tcp

TLS12_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA384",
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA", "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA256",
    "AES128-SHA", "AES256-SHA",
)
VERSION_RANGES = (("TLSv1_2", "TLSv1_3"), ("TLSv1_2", "TLSv1_2"), ("TLSv1_3", "TLSv1_3"))
ALPN_OFFERS = ((), ("http/1.1",), ("h2", "http/1.1"), ("h2",), ("http/1.1", "h2"))


@dataclass(frozen=True)
class TlsPlan:
    sni: str | None
    alpn: tuple[str, ...]
    min_version: str
    max_version: str
    tls12_suites: tuple[str, ...]
    path: str
    transport: str = "tcp"


def plan(rng: random.Random) -> TlsPlan:
    min_version, max_version = rng.choices(VERSION_RANGES, weights=(6, 2, 2))[0]
    return TlsPlan(
        sni=names.host_name(rng) if rng.random() < 0.9 else None,
        alpn=rng.choice(ALPN_OFFERS),
        min_version=min_version,
        max_version=max_version,
        tls12_suites=names.sample_ordered(rng, TLS12_SUITES, at_least=2),
        path=names.url_path(rng),
    )


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ALL:!aNULL:!eNULL")
    for cert_file, key_file in tls_certificate_files():
        context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def _client_context(session: TlsPlan) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed, made at run time
    context.minimum_version = ssl.TLSVersion[session.min_version]
    context.maximum_version = ssl.TLSVersion[session.max_version]
    context.set_ciphers(":".join(session.tls12_suites))
    if session.alpn:
        context.set_alpn_protocols(list(session.alpn))
    return context


def read_http_request(stream: socket.socket) -> bytes:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = stream.recv(4096)
        if not chunk:
            break
        request += chunk
    return request


def _handle(context: ssl.SSLContext, connection: socket.socket) -> None:
    with context.wrap_socket(connection, server_side=True) as stream:
        read_http_request(stream)
        body = b"<html><body>ok</body></html>"
        stream.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )


@contextlib.contextmanager
def serve(rng: random.Random) -> Iterator[dict[str, Address]]:
    context = _server_context()
    with serve_tcp(lambda connection: _handle(context, connection)) as address:
        yield {"tcp": address}


def talk(session: TlsPlan, address: Address) -> str | None:
    """Returns the negotiated version, e.g. "TLSv1.3"."""
    context = _client_context(session)
    with socket.create_connection(address, timeout=10) as raw, context.wrap_socket(
        raw, server_hostname=session.sni
    ) as stream:
        version = stream.version()
        host = session.sni or address[0]
        stream.sendall(f"GET {session.path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        while stream.recv(4096):
            pass
        return version


PROTOCOL = TrafficProtocol("tls", 443, ("ssl",), serve, plan, talk)
