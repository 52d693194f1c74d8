"""Protocol names: one vocabulary for Zeek services, dataset labels and model classes.

What a connection is *expected* to be comes from Zeek's confirmed `service` when there is one,
and from the responder port otherwise. The port guess is the weaker label (it is exactly what an
attacker controls), so every expectation carries its source.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

UNKNOWN = "unknown"

# Zeek, nDPI, Arkime and tshark spell some protocols differently; the dataset README lists these.
_ALIASES = {
    "ssl": "tls",
    "ssl/tls": "tls",
    "krb": "kerberos",
    "krb5": "kerberos",
    "krb_tcp": "kerberos",
    "smb2": "smb",
    "nbss": "smb",
    "mbtcp": "modbus",
    "pgsql": "postgresql",
    "resp": "redis",
    "gquic": "quic",
    "mdns": "dns",
    "llmnr": "dns",
    "dce_rpc": "dcerpc",
    "spicy_openvpn": "openvpn",
    "spicy_wireguard": "wireguard",
    "spicy_stun": "stun",
    "spicy_ipsec": "ike",
    "ntlm": "smb",
    "gssapi": "kerberos",
}

# Zeek adds these to `service` next to the real protocol; they never name the wire protocol.
_NOT_WIRE_PROTOCOLS = {"ntlm", "gssapi", "ssl_tls_unknown", "websocket-upgrade", "-", ""}

# (transport, responder port) -> protocol, the IANA assignments for the protocols we model.
PORT_PROTOCOLS: dict[tuple[str, int], str] = {
    ("tcp", 20): "ftp-data",
    ("tcp", 21): "ftp",
    ("tcp", 22): "ssh",
    ("tcp", 23): "telnet",
    ("tcp", 25): "smtp",
    ("tcp", 53): "dns",
    ("udp", 53): "dns",
    ("udp", 67): "dhcp",
    ("udp", 68): "dhcp",
    ("udp", 69): "tftp",
    ("tcp", 80): "http",
    ("tcp", 8080): "http",
    ("tcp", 8000): "http",
    ("tcp", 88): "kerberos",
    ("udp", 88): "kerberos",
    ("tcp", 110): "pop3",
    ("udp", 123): "ntp",
    ("tcp", 135): "dcerpc",
    ("udp", 137): "netbios",
    ("udp", 138): "netbios",
    ("tcp", 139): "smb",
    ("tcp", 143): "imap",
    ("udp", 161): "snmp",
    ("udp", 162): "snmp",
    ("tcp", 179): "bgp",
    ("tcp", 389): "ldap",
    ("udp", 389): "ldap",
    ("tcp", 443): "tls",
    ("udp", 443): "quic",
    ("tcp", 445): "smb",
    ("udp", 500): "ike",
    ("udp", 4500): "ike",
    ("tcp", 465): "smtp",
    ("tcp", 502): "modbus",
    ("udp", 514): "syslog",
    ("tcp", 587): "smtp",
    ("tcp", 636): "tls",
    ("tcp", 853): "tls",
    ("tcp", 993): "tls",
    ("tcp", 995): "tls",
    ("udp", 1194): "openvpn",
    ("tcp", 1194): "openvpn",
    ("tcp", 1433): "tds",
    ("tcp", 1883): "mqtt",
    ("udp", 1900): "ssdp",
    ("tcp", 3306): "mysql",
    ("tcp", 3389): "rdp",
    ("udp", 3478): "stun",
    ("tcp", 4840): "opcua",
    ("tcp", 5060): "sip",
    ("udp", 5060): "sip",
    ("tcp", 5432): "postgresql",
    ("udp", 5353): "dns",
    ("tcp", 5900): "vnc",
    ("tcp", 6379): "redis",
    ("tcp", 6667): "irc",
    ("tcp", 8443): "tls",
    ("tcp", 8883): "tls",
    ("tcp", 20000): "dnp3",
    ("udp", 47808): "bacnet",
    ("udp", 51820): "wireguard",
    ("tcp", 102): "s7comm",
    ("tcp", 44818): "enip",
    ("udp", 44818): "enip",
}


def canonical_protocol(name: str) -> str:
    """Map any tool's spelling of a protocol to this project's vocabulary (lower case)."""
    lowered = name.strip().lower()
    return _ALIASES.get(lowered, lowered) or UNKNOWN


def protocol_from_services(services: Iterable[str]) -> str | None:
    """The wire protocol Zeek confirmed, or None; Zeek lists it first, helpers like ntlm after."""
    for entry in services:
        for name in entry.split(","):
            if name.strip().lower() not in _NOT_WIRE_PROTOCOLS:
                return canonical_protocol(name)
    return None


def protocol_from_port(transport: str, resp_p: int) -> str:
    return PORT_PROTOCOLS.get((transport, resp_p), UNKNOWN)


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a connection claims to be, and how we know: 'zeek' (a parser confirmed it) or 'port'."""

    protocol: str
    source: str


def expected_protocol(services: Iterable[str], transport: str, resp_p: int) -> Expectation:
    confirmed = protocol_from_services(services)
    if confirmed is not None:
        return Expectation(confirmed, "zeek")
    return Expectation(protocol_from_port(transport, resp_p), "port")
