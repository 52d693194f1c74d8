"""The protocols the generator knows, by name, in the order a full run produces them."""

from __future__ import annotations

from headbits.traffic import dns, ftp, grpc_http2, http, modbus, smtp, ssh, tls, websocket
from headbits.traffic.base import TrafficProtocol

TRAFFIC: dict[str, TrafficProtocol] = {
    protocol.name: protocol
    for protocol in (
        tls.PROTOCOL, http.PROTOCOL, dns.PROTOCOL, ssh.PROTOCOL, smtp.PROTOCOL, ftp.PROTOCOL,
        websocket.PROTOCOL, grpc_http2.PROTOCOL, modbus.PROTOCOL,
    )
}
PROTOCOLS: tuple[str, ...] = tuple(TRAFFIC)
