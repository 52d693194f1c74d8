"""HTTP/1.1: `http.client` against `http.server`, one or more requests per connection.

Clients vary methods, paths, Host names, user agents and optional headers; the server varies
its `Server` header per connection as a population of web servers would.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from headbits.traffic import names
from headbits.traffic.base import Address, TrafficProtocol

METHODS = ("GET", "GET", "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")
SERVER_HEADERS = ("nginx/1.24.0", "Apache/2.4.58 (Ubuntu)", "Microsoft-IIS/10.0", "cloudflare",
                  "gunicorn", "Caddy", "lighttpd/1.4.73")
OPTIONAL_HEADERS = {
    "Accept": ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
               "application/json", "*/*"),
    "Accept-Language": ("en-US,en;q=0.5", "de-DE,de;q=0.9", "fr-FR,fr;q=0.8,en;q=0.3"),
    "Cookie": ("session=4f2a9c1e; theme=dark", "_ga=GA1.2.1234567890.1700000000"),
    "Cache-Control": ("no-cache", "max-age=0"),
    "Referer": ("https://www.example.com/", "https://www.google.com/"),
    "Authorization": ("Basic YWxpY2U6c2VjcmV0", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"),
    "X-Requested-With": ("XMLHttpRequest",),
    "Connection": ("keep-alive",),
}
ACCEPT_ENCODINGS = ("gzip, deflate, br", "gzip, deflate", "gzip", "identity", "br, gzip")


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class HttpPlan:
    host: str
    requests: tuple[HttpRequest, ...]
    transport: str = "tcp"


def plan(rng: random.Random) -> HttpPlan:
    host = names.host_name(rng)
    user_agent = rng.choice(names.USER_AGENTS)
    requests = []
    for _ in range(rng.choices((1, 2, 3), weights=(6, 3, 1))[0]):
        method = rng.choice(METHODS)
        headers = [("Host", host), ("User-Agent", user_agent)]
        for name in rng.sample(sorted(OPTIONAL_HEADERS), rng.randint(0, 3)):
            headers.append((name, rng.choice(OPTIONAL_HEADERS[name])))
        if rng.random() < 0.7:
            headers.append(("Accept-Encoding", rng.choice(ACCEPT_ENCODINGS)))
        body = b""
        if method in ("POST", "PUT", "PATCH"):
            body = f'{{"id": {rng.randint(1, 9999)}, "q": "{names.user_name(rng)}"}}'.encode()
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        requests.append(HttpRequest(method, names.url_path(rng), tuple(headers), body))
    return HttpPlan(host=host, requests=tuple(requests))


def _handler_class(rng: random.Random, lock: threading.Lock) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def version_string(self) -> str:
            with lock:
                return rng.choice(SERVER_HEADERS)

        def log_message(self, format: str, *args) -> None:
            """Quiet: the generator reports progress itself."""

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = f"<html><body>{self.command} {self.path}</body></html>".encode()
            self.send_response(404 if "wp-admin" in self.path else 200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        # http.server dispatches on these names.
        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _answer  # noqa: N815

    return Handler


@contextlib.contextmanager
def serve(rng: random.Random) -> Iterator[dict[str, Address]]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), _handler_class(rng, threading.Lock())
    )
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield {"tcp": server.server_address[:2]}
    finally:
        server.shutdown()
        server.server_close()


def talk(session: HttpPlan, address: Address) -> list[int]:
    """Returns the status codes received."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    statuses = []
    try:
        for request in session.requests:
            # Headers go out exactly in the plan's order, Host first, as browsers send them.
            connection.putrequest(
                request.method, request.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in request.headers:
                connection.putheader(name, value)
            connection.endheaders(request.body or None)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        connection.close()
    return statuses


PROTOCOL = TrafficProtocol("http", 80, ("http",), serve, plan, talk)
