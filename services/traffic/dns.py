"""DNS over UDP and TCP: dnspython's client against a server built on dnspython's message API.

Clients vary query names, types, EDNS (on or off, advertised payload size, DO bit), the RD flag
and the transport (mostly UDP, as in real networks). The server answers authoritatively with
made-up but well-formed records, or NXDOMAIN for some names.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

from headbits.traffic import names
from headbits.traffic.base import Address, TrafficProtocol
from headbits.traffic.servers import serve_tcp, serve_udp

QUERY_TYPES = ("A", "A", "A", "AAAA", "AAAA", "HTTPS", "MX", "TXT", "NS", "CNAME", "SOA", "PTR",
               "SRV")
EDNS_PAYLOADS = (512, 1232, 1400, 4096)


@dataclass(frozen=True)
class DnsPlan:
    qname: str
    rdtype: str
    query_id: int
    recursion_desired: bool
    edns_payload: int | None
    dnssec_ok: bool
    transport: str


def plan(rng: random.Random) -> DnsPlan:
    rdtype = rng.choice(QUERY_TYPES)
    if rdtype == "PTR":
        qname = ".".join(str(rng.randint(1, 254)) for _ in range(4)) + ".in-addr.arpa"
    elif rdtype == "SRV":
        qname = f"_{rng.choice(('ldap', 'sip', 'xmpp-client', 'kerberos'))}._tcp."
        qname += names.domain(rng)
    else:
        qname = names.host_name(rng)
    edns_payload = rng.choice(EDNS_PAYLOADS) if rng.random() < 0.7 else None
    return DnsPlan(
        qname=qname,
        rdtype=rdtype,
        query_id=rng.randint(0, 65535),
        recursion_desired=rng.random() < 0.9,
        edns_payload=edns_payload,
        dnssec_ok=edns_payload is not None and rng.random() < 0.3,
        transport="tcp" if rng.random() < 0.25 else "udp",
    )


def _answer_text(rdtype: str, digest: bytes, qname: str) -> str | None:
    """A well-formed answer for the type, derived from the name so it is stable."""
    octets = list(digest[:16])
    answers = {
        "A": f"{octets[0] % 223 + 1}.{octets[1]}.{octets[2]}.{octets[3] % 254 + 1}",
        "AAAA": str(ipaddress.IPv6Address(b"\x20\x01\x0d\xb8" + digest[:12])),
        "MX": f"10 mx{octets[0] % 3}.{qname}",
        "TXT": f'"v=spf1 include:_spf.{qname} ~all"',
        "NS": f"ns{octets[0] % 4 + 1}.{qname}",
        "CNAME": f"edge-{digest.hex()[:8]}.cdn.{qname}",
        "SOA": f"ns1.{qname} hostmaster.{qname} {octets[0] + 2024000000} 7200 3600 1209600 300",
        "PTR": f"host-{digest.hex()[:6]}.example.net.",
        "SRV": f"0 5 389 dc{octets[0] % 3}.{qname}",
        "HTTPS": '1 . alpn="h2,h3"',
    }
    return answers.get(rdtype)


def answer(wire: bytes) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA | dns.flags.RA
    question = query.question[0]
    qname = question.name.to_text()
    rdtype = dns.rdatatype.to_text(question.rdtype)
    digest = hashlib.sha256(qname.encode()).digest()
    text = _answer_text(rdtype, digest, qname)
    if digest[0] < 20 or text is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
    else:
        ttl = (60, 300, 3600, 86400)[digest[1] % 4]
        response.answer.append(dns.rrset.from_text(qname, ttl, "IN", rdtype, text))
    return response.to_wire()


def _serve_tcp_connection(connection: socket.socket) -> None:
    stream = connection.makefile("rb")
    while (prefix := stream.read(2)) and len(prefix) == 2:
        reply = answer(stream.read(struct.unpack("!H", prefix)[0]))
        connection.sendall(struct.pack("!H", len(reply)) + reply)


@contextlib.contextmanager
def serve(rng: random.Random) -> Iterator[dict[str, Address]]:
    with serve_udp(answer) as udp_address, serve_tcp(_serve_tcp_connection) as tcp_address:
        yield {"udp": udp_address, "tcp": tcp_address}


def build_query(session: DnsPlan) -> dns.message.Message:
    query = dns.message.make_query(
        session.qname,
        session.rdtype,
        use_edns=0 if session.edns_payload is not None else False,
        payload=session.edns_payload or 512,
        want_dnssec=session.dnssec_ok,
    )
    query.id = session.query_id
    if not session.recursion_desired:
        query.flags &= ~dns.flags.RD
    return query


def talk(session: DnsPlan, address: Address) -> dns.message.Message:
    """Returns the response (dnspython checks that it matches the query)."""
    host, port = address
    query = build_query(session)
    if session.transport == "udp":
        return dns.query.udp(query, host, port=port, timeout=10)
    return dns.query.tcp(query, host, port=port, timeout=10)


PROTOCOL = TrafficProtocol("dns", 53, ("dns",), serve, plan, talk)
