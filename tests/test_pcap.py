"""Capture reading: captures the tests write with dpkt from hand-built packets; the corpus."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import dpkt
import pytest

from headbits.collector.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    iter_captures,
    read_capture,
)
from headbits.collector.reassembly import TCP_ACK, TCP_SYN

ETH_IP, ETH_IP6, ETH_VLAN, ETH_QINQ = 0x0800, 0x86DD, 0x8100, 0x88A8
MACS = b"\x00\x11\x22\x33\x44\x55" + b"\x66\x77\x88\x99\xaa\xbb"


def ipv4(src, dst, transport):
    proto = 6 if isinstance(transport, dpkt.tcp.TCP) else 17
    return bytes(
        dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, data=transport)
    )


def ipv6_with_hop_by_hop(src, dst, transport):
    """IPv6 whose TCP sits behind a hop-by-hop options header (8 bytes of PadN)."""
    payload = bytes(transport)
    hop_by_hop = bytes([6, 0, 1, 4, 0, 0, 0, 0])
    header = struct.pack(">IHBB", 6 << 28, len(hop_by_hop) + len(payload), 0, 64)
    return (
        header + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
        + hop_by_hop + payload
    )


def tcp_conversation(make_ip, client, server, request, response):
    """IP packets of a handshake, a request and a response."""
    (client_h, client_p), (server_h, server_p) = client, server

    def segment(forward, flags, seq, ack, data=b""):
        sport, dport = (client_p, server_p) if forward else (server_p, client_p)
        src, dst = (client_h, server_h) if forward else (server_h, client_h)
        return make_ip(src, dst, dpkt.tcp.TCP(
            sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, data=data
        ))

    return [
        segment(True, TCP_SYN, 100, 0),
        segment(False, TCP_SYN | TCP_ACK, 500, 101),
        segment(True, TCP_ACK, 101, 501, request),
        segment(False, TCP_ACK, 501, 101 + len(request), response),
    ]


def write_pcap(path: Path, linktype: int, frames: list[bytes], start: float = 1_700_000_000.0):
    with path.open("wb") as stream:
        writer = dpkt.pcap.Writer(stream, linktype=linktype)
        for number, frame in enumerate(frames):
            writer.writepkt(frame, ts=start + number * 0.01)
    return path


def ethertype(ip_packet: bytes) -> int:
    return ETH_IP6 if ip_packet[0] >> 4 == 6 else ETH_IP


def ethernet(ip_packet: bytes, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    """Ethernet frame with 802.1Q/802.1ad tags given as (tag protocol id, vlan id)."""
    header = MACS
    for tpid, vlan in tags:
        header += struct.pack(">HH", tpid, vlan)
    return header + struct.pack(">H", ethertype(ip_packet)) + ip_packet


V4_CLIENT, V4_SERVER = ("192.0.2.1", 51000), ("198.51.100.7", 80)
V6_CLIENT, V6_SERVER = ("2001:db8::1", 51000), ("2001:db8::2", 443)
REQUEST, RESPONSE = b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"


def assert_one_conversation(read, client, server):
    assert read.errors == []
    (head,) = read.heads
    assert (head.orig_h, head.orig_p, head.resp_h, head.resp_p) == (*client, *server)
    assert (head.orig_head, head.resp_head) == (REQUEST, RESPONSE)
    assert not head.orig_gap and not head.resp_gap
    return head


LINK_LAYERS = {
    "ethernet": (LINKTYPE_ETHERNET, ethernet),
    "vlan": (LINKTYPE_ETHERNET, lambda ip: ethernet(ip, ((ETH_VLAN, 10),))),
    "qinq": (LINKTYPE_ETHERNET, lambda ip: ethernet(ip, ((ETH_QINQ, 20), (ETH_VLAN, 30)))),
    "sll": (
        LINKTYPE_LINUX_SLL,
        lambda ip: struct.pack(">HHH8sH", 0, 1, 6, b"", ethertype(ip)) + ip,
    ),
    "sll2": (
        LINKTYPE_LINUX_SLL2,
        lambda ip: struct.pack(">HHiHBB8s", ethertype(ip), 0, 1, 1, 0, 6, b"") + ip,
    ),
    "raw": (LINKTYPE_RAW, lambda ip: ip),
    "null": (LINKTYPE_NULL, lambda ip: struct.pack("<I", 30 if ip[0] >> 4 == 6 else 2) + ip),
}


@pytest.mark.parametrize("layer", sorted(LINK_LAYERS))
@pytest.mark.parametrize("version", ["ipv4", "ipv6"])
def test_link_layers_and_ip_versions(tmp_path: Path, layer: str, version: str):
    linktype, frame = LINK_LAYERS[layer]
    make_ip, client, server = (
        (ipv4, V4_CLIENT, V4_SERVER) if version == "ipv4"
        else (ipv6_with_hop_by_hop, V6_CLIENT, V6_SERVER)
    )
    packets = tcp_conversation(make_ip, client, server, REQUEST, RESPONSE)
    path = write_pcap(tmp_path / f"{layer}.pcap", linktype, [frame(ip) for ip in packets])
    read = read_capture(path)
    head = assert_one_conversation(read, client, server)
    assert read.packets == 4 and sum(read.skipped.values()) == 0
    assert head.sensor == layer
    assert head.ts == pytest.approx(1_700_000_000.0)


def test_pcapng_and_explicit_sensor(tmp_path: Path):
    packets = tcp_conversation(ipv4, V4_CLIENT, V4_SERVER, REQUEST, RESPONSE)
    path = tmp_path / "capture.pcapng"
    with path.open("wb") as stream:
        writer = dpkt.pcapng.Writer(stream, linktype=LINKTYPE_ETHERNET)
        for number, ip in enumerate(packets):
            writer.writepkt(ethernet(ip), ts=1_700_000_000.0 + number)
    read = read_capture(path, sensor="edge-1")
    head = assert_one_conversation(read, V4_CLIENT, V4_SERVER)
    assert head.sensor == "edge-1"
    assert head.ts == pytest.approx(1_700_000_000.0)


def test_same_five_tuple_on_two_vlans_is_two_connections(tmp_path: Path):
    packets = tcp_conversation(ipv4, V4_CLIENT, V4_SERVER, REQUEST, RESPONSE)
    frames = [ethernet(ip, ((ETH_VLAN, 10),)) for ip in packets]
    frames += [ethernet(ip, ((ETH_VLAN, 42),)) for ip in packets]
    heads = read_capture(write_pcap(tmp_path / "vlans.pcap", LINKTYPE_ETHERNET, frames)).heads
    assert len(heads) == 2 and heads[0].uid != heads[1].uid
    assert all(head.orig_head == REQUEST for head in heads)


def test_udp_and_non_ip_packets_are_counted(tmp_path: Path):
    dns = ipv4("192.0.2.1", "192.0.2.53", dpkt.udp.UDP(sport=5353, dport=53, data=b"\x12\x34query"))
    arp = MACS + struct.pack(">H", 0x0806) + bytes(28)
    icmp = bytes(dpkt.ip.IP(src=b"\x01\x01\x01\x01", dst=b"\x02\x02\x02\x02", p=1, data=b"ping"))
    read = read_capture(
        write_pcap(tmp_path / "mixed.pcap", LINKTYPE_ETHERNET, [ethernet(dns), arp, ethernet(icmp)])
    )
    (head,) = read.heads
    assert (head.transport, head.orig_head, head.resp_head) == ("udp", b"\x12\x34query", b"")
    assert read.skipped == {"not IP": 1, "not TCP or UDP": 1}


def test_land_packet_is_counted_not_a_crash(tmp_path: Path):
    """A LAND attack packet (source endpoint == destination endpoint) once made `read_capture`
    raise from the reassembly's finish: it is now one skip reason, and the connections around
    it are kept."""
    land = ipv4("10.0.0.1", "10.0.0.1", dpkt.tcp.TCP(sport=80, dport=80, flags=TCP_SYN,
                                                      data=b"land"))
    normal = tcp_conversation(ipv4, V4_CLIENT, V4_SERVER, REQUEST, RESPONSE)
    path = write_pcap(tmp_path / "land.pcap", LINKTYPE_ETHERNET,
                      [ethernet(ip) for ip in [land, *normal, land]])
    read = read_capture(path)
    assert read.errors == []
    assert read.skipped == {"LAND (source endpoint = destination endpoint)": 2}
    (head,) = read.heads
    assert (head.orig_head, head.resp_head) == (REQUEST, RESPONSE)


def two_conversations(tmp_path: Path) -> tuple[Path, int]:
    """A capture of two connections, and the byte offset where the last record starts."""
    first = tcp_conversation(ipv4, V4_CLIENT, V4_SERVER, REQUEST, RESPONSE)
    second = tcp_conversation(ipv4, ("192.0.2.9", 52000), V4_SERVER, b"second", b"reply")
    frames = [ethernet(ip) for ip in first + second]
    path = write_pcap(tmp_path / "two.pcap", LINKTYPE_ETHERNET, frames)
    last_record = path.stat().st_size - 16 - len(frames[-1])
    return path, last_record


def test_truncated_capture_names_file_and_offset_and_keeps_earlier_connections(tmp_path: Path):
    path, last_record = two_conversations(tmp_path)
    path.write_bytes(path.read_bytes()[: last_record + 16 + 10])
    read = read_capture(path)
    (error,) = read.errors
    assert str(path) in error
    assert f"byte offset {last_record}" in error and "packet 8" in error
    assert read.packets == 7
    assert [head.orig_head for head in read.heads] == [REQUEST, b"second"]
    assert read.heads[1].resp_head == b""  # its response was in the lost record


def test_corrupt_record_length_is_an_error_not_a_crash(tmp_path: Path):
    path, last_record = two_conversations(tmp_path)
    data = bytearray(path.read_bytes())
    data[last_record + 8 : last_record + 12] = struct.pack("<I", 0x7FFFFFFF)
    path.write_bytes(bytes(data))
    read = read_capture(path)
    (error,) = read.errors
    assert f"corrupt record at byte offset {last_record}" in error and str(path) in error
    assert len(read.heads) == 2


def test_truncated_pcapng_block(tmp_path: Path):
    path = tmp_path / "cut.pcapng"
    with path.open("wb") as stream:
        writer = dpkt.pcapng.Writer(stream, linktype=LINKTYPE_ETHERNET)
        for ip in tcp_conversation(ipv4, V4_CLIENT, V4_SERVER, REQUEST, RESPONSE):
            writer.writepkt(ethernet(ip), ts=1.0)
    path.write_bytes(path.read_bytes()[:-20])
    read = read_capture(path)
    (error,) = read.errors
    assert "truncated pcapng block at byte offset" in error and str(path) in error
    (head,) = read.heads
    assert head.orig_head == REQUEST and head.resp_head == b""


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "too short"), (b"this is not a capture file at all", "not a pcap or pcapng file")],
)
def test_unreadable_files_give_one_clear_error(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    read = read_capture(path)
    assert read.heads == [] and read.packets == 0
    (error,) = read.errors
    assert message in error and str(path) in error


def test_missing_file(tmp_path: Path):
    (read,) = iter_captures([tmp_path / "absent.pcap"])
    (error,) = read.errors
    assert "cannot read" in error and "absent.pcap" in error


SHARED_LINK_TYPES = {
    "arkime/smtp-html.pcap": "null/loopback",
    "suricata-verify/tcp-fastopen-05/tfo.pcap": "Linux SLL, TCP fast open",
    "arkime/adb.pcap": "raw IPv4 (228)",
    "zeek-traces/dns/ech.pcap": "raw IP (101)",
    "arkime/nflog.pcap": "NFLOG",
    "zeek-traces/ppp/quic-interop-retry.pcap": "PPP",
    "ndpi/BGP_redist.pcap": "Cisco HDLC",
    "zeek-traces/irc-dcc-send.pcapng": "pcapng",
    "ndpi/badpackets.pcap": "first IP fragments cut by the snap length",
}


@pytest.mark.shared_data
@pytest.mark.parametrize("relative", sorted(SHARED_LINK_TYPES))
def test_shared_captures_yield_every_labelled_flow(shared_pcaps: Path, relative: str):
    """Every flow LABELS.tsv lists for the file (tshark's view) is among our heads."""
    read = read_capture(shared_pcaps / relative)
    assert read.errors == []
    ours = set()
    for head in read.heads:
        head.validate()
        ours.add((head.transport, head.orig_h, head.orig_p, head.resp_h, head.resp_p))
        ours.add((head.transport, head.resp_h, head.resp_p, head.orig_h, head.orig_p))
    with (shared_pcaps / "LABELS.tsv").open() as labels:
        rows = [line.rstrip("\n").split("\t") for line in labels]
    listed = {
        (row[1], row[2], int(row[3]), row[4], int(row[5])) for row in rows[1:] if row[0] == relative
    }
    assert listed, f"{relative} has no labelled flows"
    assert listed <= ours, f"{SHARED_LINK_TYPES[relative]}: missing {sorted(listed - ours)[:3]}"
