"""pcap and pcapng captures -> PayloadHeads, the offline source of the whole system.

The record loops are ours (they know each record's byte offset, so a truncated or corrupt file
gets an error naming it and everything before it is kept); headers and protocol layers are
decoded with dpkt. Link types: Ethernet (802.1Q/QinQ VLAN, MPLS, PPPoE), Linux cooked SLL and
SLL2, raw IPv4/IPv6, BSD null/loopback, PPP, Cisco HDLC, NFLOG (802.11 is counted as an
unsupported link type). IP-in-IP is decapsulated; other tunnels are not: GRE packets are counted,
VXLAN/Geneve/GTP/Teredo appear as their outer UDP flows.
Every packet that does not become a segment is counted by reason in `CaptureRead.skipped`.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

# dpkt rather than scapy: it decodes the shared corpus about 17x faster, see bench/pcap.py.
import dpkt

from headbits.collector.reassembly import ConnectionTable, Segment
from headbits.common.records import MAX_HEAD_BYTES, PayloadHead

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = 101
LINKTYPE_C_HDLC = 104
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276
# DLT_RAW has other numbers on some BSDs (12 on most, 14 on OpenBSD).
_RAW_LINKTYPES = {LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6}

_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_IDB = 1
_PCAPNG_PB = 2
_PCAPNG_SPB = 3
_PCAPNG_EPB = 6
_PCAPNG_BOM_LE = b"\x4d\x3c\x2b\x1a"
_PCAPNG_BOM_BE = b"\x1a\x2b\x3c\x4d"
_PCAPNG_OPT_TSRESOL = 9
_PCAPNG_OPT_TSOFFSET = 14
_MAX_RECORD = 1 << 24
_NANO_MAGICS = {dpkt.pcap.TCPDUMP_MAGIC_NANO, dpkt.pcap.PMUDPCT_MAGIC_NANO}
_LE_MAGICS = {dpkt.pcap.PMUDPCT_MAGIC, dpkt.pcap.PMUDPCT_MAGIC_NANO, dpkt.pcap.PACPDOM_MAGIC}

_IP_PROTO_IPIP = 4
_IP_PROTO_TCP = 6
_IP_PROTO_UDP = 17
_IP_PROTO_IPV6 = 41
_IP_PROTO_GRE = 47
_IP_PROTO_IPV6_FRAGMENT = 44
_MAX_ENCAPSULATION = 4


@dataclass
class CaptureRead:
    """What one capture yielded.

    `errors` are file-level problems (unreadable, truncated, corrupt record), each naming the file
    and the byte offset and packet number; the packets before the problem are still in `heads`.
    `skipped` counts packets that did not become TCP/UDP segments, by reason.
    """

    path: Path
    heads: list[PayloadHead] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    packets: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    connections_without_payload: int = 0


class CaptureFormatError(Exception):
    """The capture cannot be read past this point; the message names the offset."""


@dataclass(frozen=True, slots=True)
class _Interface:
    linktype: int
    divisor: float
    offset_seconds: int


def read_capture(path: Path, n: int = MAX_HEAD_BYTES, sensor: str | None = None) -> CaptureRead:
    """Reassemble the first `n` bytes per direction of every connection in one capture file.

    Never raises for bad input: problems end up in `errors` and `skipped`. `sensor` defaults to
    the file's stem.
    """
    path = Path(path)
    result = CaptureRead(path=path)
    table = ConnectionTable(n=n, sensor=sensor if sensor is not None else path.stem)
    skipped = result.skipped
    try:
        with path.open("rb") as stream:
            for linktype, ts, frame in _records(stream):
                result.packets += 1
                decoded = _decode(linktype, ts, frame)
                refused = decoded if isinstance(decoded, str) else table.add(decoded)
                if refused is not None:
                    skipped[refused] += 1
    except CaptureFormatError as error:
        result.errors.append(f"{path}: {error} (after {result.packets} packets)")
    except OSError as error:
        result.errors.append(f"{path}: cannot read: {error.strerror or error}")
    result.heads = table.finish()
    result.connections_without_payload = table.connections_without_payload
    return result


def iter_captures(
    paths: Iterable[Path], n: int = MAX_HEAD_BYTES, sensor: str | None = None
) -> Iterator[CaptureRead]:
    """`read_capture` over many files, one at a time, so memory holds one capture's heads."""
    for path in paths:
        yield read_capture(Path(path), n=n, sensor=sensor)


def expand_captures(paths: Iterable[Path]) -> list[Path]:
    """Capture files named by `paths`: files as given, directories searched for *.pcap and
    *.pcapng (sorted)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in (".pcap", ".pcapng"))
        else:
            found.append(path)
    return found


def _records(stream: BinaryIO) -> Iterator[tuple[int, float, bytes]]:
    magic = stream.read(4)
    stream.seek(0)
    if len(magic) < 4:
        raise CaptureFormatError(f"file is {len(magic)} bytes, too short for a capture header")
    if struct.unpack(">I", magic)[0] == _PCAPNG_SHB:
        yield from _pcapng_records(stream)
    else:
        yield from _pcap_records(stream)


def _pcap_records(stream: BinaryIO) -> Iterator[tuple[int, float, bytes]]:
    header_bytes = stream.read(dpkt.pcap.FileHdr.__hdr_len__)
    if len(header_bytes) < dpkt.pcap.FileHdr.__hdr_len__:
        raise CaptureFormatError("truncated pcap file header at byte offset 0")
    magic = dpkt.pcap.FileHdr(header_bytes).magic
    if magic not in dpkt.pcap.MAGIC_TO_PKT_HDR:
        raise CaptureFormatError(f"not a pcap or pcapng file (magic 0x{magic:08x} at offset 0)")
    little = magic in _LE_MAGICS
    header = (dpkt.pcap.LEFileHdr if little else dpkt.pcap.FileHdr)(header_bytes)
    record = struct.Struct("<IIII" if little else ">IIII")
    divisor = 1e9 if magic in _NANO_MAGICS else 1e6
    limit = max(header.snaplen, 262144)
    offset = len(header_bytes)
    number = 0
    while True:
        raw = stream.read(record.size)
        if not raw:
            return
        number += 1
        if len(raw) < record.size:
            raise CaptureFormatError(
                f"truncated record header at byte offset {offset} (packet {number})"
            )
        seconds, fraction, caplen, _ = record.unpack(raw)
        if caplen > limit:
            raise CaptureFormatError(
                f"corrupt record at byte offset {offset} (packet {number}): "
                f"captured length {caplen} exceeds the limit {limit}"
            )
        frame = stream.read(caplen)
        if len(frame) < caplen:
            raise CaptureFormatError(
                f"truncated packet at byte offset {offset} (packet {number}): "
                f"record needs {caplen} bytes, file has {len(frame)}"
            )
        yield header.linktype, seconds + fraction / divisor, frame
        offset += record.size + caplen


def _pcapng_records(stream: BinaryIO) -> Iterator[tuple[int, float, bytes]]:
    endian = "<"
    interfaces: list[_Interface] = []
    offset = 0
    number = 0
    while True:
        head = stream.read(8)
        if not head:
            return
        if len(head) < 8:
            raise CaptureFormatError(f"truncated pcapng block header at byte offset {offset}")
        prefix = b""
        if struct.unpack(">I", head[:4])[0] == _PCAPNG_SHB:
            prefix = stream.read(4)
            if prefix not in (_PCAPNG_BOM_LE, _PCAPNG_BOM_BE):
                raise CaptureFormatError(f"bad pcapng byte-order magic at byte offset {offset + 8}")
            endian = "<" if prefix == _PCAPNG_BOM_LE else ">"
            interfaces = []
        block_type, block_len = struct.unpack(endian + "II", head)
        if block_len < 12 + len(prefix) or block_len % 4 or block_len > _MAX_RECORD:
            raise CaptureFormatError(
                f"corrupt pcapng block at byte offset {offset}: length {block_len}"
            )
        body = prefix + stream.read(block_len - 8 - len(prefix))
        if len(body) < block_len - 8:
            raise CaptureFormatError(
                f"truncated pcapng block at byte offset {offset} (after packet {number}): "
                f"block needs {block_len} bytes, file has {len(body) + 8}"
            )
        if block_type == _PCAPNG_IDB:
            interfaces.append(_interface(head + body, endian, offset))
        elif block_type in (_PCAPNG_EPB, _PCAPNG_PB, _PCAPNG_SPB):
            number += 1
            yield _pcapng_packet(
                block_type, body, endian, interfaces=interfaces, offset=offset, number=number
            )
        offset += block_len


def _interface(block: bytes, endian: str, offset: int) -> _Interface:
    cls = dpkt.pcapng.InterfaceDescriptionBlockLE if endian == "<" else (
        dpkt.pcapng.InterfaceDescriptionBlock
    )
    try:
        idb = cls(block)
    except (dpkt.UnpackError, struct.error) as error:
        raise CaptureFormatError(f"corrupt interface block at byte offset {offset}") from error
    divisor, offset_seconds = 1e6, 0
    for option in idb.opts:
        if option.code == _PCAPNG_OPT_TSRESOL and option.data:
            resolution = option.data[0]
            divisor = float((2 if resolution & 0x80 else 10) ** (resolution & 0x7F))
        elif option.code == _PCAPNG_OPT_TSOFFSET and len(option.data) == 8:
            offset_seconds = struct.unpack(endian + "q", option.data)[0]
    return _Interface(idb.linktype, divisor, offset_seconds)


def _pcapng_packet(
    block_type: int, body: bytes, endian: str, *, interfaces: list[_Interface], offset: int,
    number: int,
) -> tuple[int, float, bytes]:
    minimum = 8 if block_type == _PCAPNG_SPB else 24  # fixed fields + trailing block length
    if len(body) < minimum:
        raise CaptureFormatError(
            f"corrupt packet block at byte offset {offset} (packet {number}): "
            f"{len(body) + 8} bytes, too short for its fixed fields"
        )
    if block_type == _PCAPNG_SPB:
        interface_id, ts_high, ts_low = 0, 0, 0
        (original_len,) = struct.unpack_from(endian + "I", body, 0)
        frame = body[4 : 4 + min(original_len, len(body) - 8)]
    else:
        if block_type == _PCAPNG_EPB:
            interface_id, ts_high, ts_low, caplen = struct.unpack_from(endian + "IIII", body, 0)
        else:
            interface_id, _, ts_high, ts_low, caplen = struct.unpack_from(
                endian + "HHIII", body, 0
            )
        if 24 + caplen > len(body):
            raise CaptureFormatError(
                f"corrupt packet block at byte offset {offset} (packet {number}): "
                f"captured length {caplen} exceeds the block"
            )
        frame = body[20 : 20 + caplen]
    if interface_id >= len(interfaces):
        raise CaptureFormatError(
            f"packet block at byte offset {offset} (packet {number}) names interface "
            f"{interface_id}, but only {len(interfaces)} are described"
        )
    interface = interfaces[interface_id]
    ts = interface.offset_seconds + ((ts_high << 32) | ts_low) / interface.divisor
    return interface.linktype, ts, frame


def _decode(linktype: int, ts: float, frame: bytes) -> Segment | str:
    """The packet's TCP/UDP segment, or the reason it has none (a skip counter's name)."""
    try:
        network = _network_layer(linktype, frame)
        if isinstance(network, str):
            return network
        vlans, packet = network
        return _transport_segment(ts, packet, vlans)
    except (dpkt.Error, struct.error, IndexError, KeyError, ValueError, AttributeError) as error:
        return f"malformed ({type(error).__name__})"  # dpkt's decoders raise all of these


def _network_layer(linktype: int, frame: bytes) -> tuple[tuple[int, ...], dpkt.Packet] | str:
    vlans: tuple[int, ...] = ()
    if linktype == LINKTYPE_ETHERNET:
        packet = dpkt.ethernet.Ethernet(frame)
    elif linktype in _RAW_LINKTYPES:
        packet = _ip_by_version(frame)
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        packet = dpkt.loopback.Loopback(frame).data
    elif linktype == LINKTYPE_LINUX_SLL:
        packet = dpkt.sll.SLL(frame).data
    elif linktype == LINKTYPE_LINUX_SLL2:
        packet = dpkt.sll2.SLL2(frame).data
    elif linktype == LINKTYPE_PPP:
        packet = dpkt.ppp.PPP(frame if frame[:2] == b"\xff\x03" else b"\xff\x03" + frame).data
    elif linktype == LINKTYPE_C_HDLC:  # address, control, then an ethertype (IP, MPLS, ...)
        packet = dpkt.ethernet.Ethernet(bytes(12) + frame[2:])
    elif linktype == LINKTYPE_NFLOG:
        packet = _ip_by_version(_nflog_payload(frame))
    else:
        return f"unsupported link type {linktype}"
    for _ in range(_MAX_ENCAPSULATION):
        if isinstance(packet, dpkt.ip.IP | dpkt.ip6.IP6):
            return vlans, packet
        if not isinstance(packet, dpkt.Packet):
            break
        if isinstance(packet, dpkt.ethernet.Ethernet):
            vlans += tuple(tag.id for tag in getattr(packet, "vlan_tags", ()))
        packet = packet.data  # PPPoE -> PPP, LLC/SNAP, 802.11 frames, Ethernet over MPLS
    return "not IP"


def _ip_by_version(buffer: bytes) -> dpkt.Packet | bytes:
    version = buffer[0] >> 4 if buffer else 0
    if version == 4:
        return dpkt.ip.IP(buffer)
    if version == 6:
        return dpkt.ip6.IP6(buffer)
    return buffer


def _nflog_payload(frame: bytes) -> bytes:
    """The packet inside a Linux NFLOG record: the TLV of type 9 (lengths are host-endian)."""
    position = 4
    while position + 4 <= len(frame):
        length, kind = struct.unpack_from("<HH", frame, position)
        if length < 4:
            break
        if kind == 9:
            return frame[position + 4 : position + length]
        position += (length + 3) & ~3
    return b""


def _transport_segment(ts: float, packet: dpkt.Packet, vlans: tuple[int, ...]) -> Segment | str:
    for _ in range(_MAX_ENCAPSULATION):
        framing = _ip_framing(packet)
        if isinstance(framing, str):
            return framing
        first_fragment, transport_len = framing
        inner = packet.data
        if isinstance(inner, dpkt.ip.IP | dpkt.ip6.IP6):
            packet = inner
            continue
        if isinstance(inner, dpkt.tcp.TCP):
            payload_len = max(transport_len - inner.off * 4, len(inner.data) + first_fragment)
            return Segment(
                ts, "tcp", packet.src, inner.sport, packet.dst, inner.dport, bytes(inner.data),
                payload_len, inner.flags, inner.seq, inner.ack, vlans,
            )
        if isinstance(inner, dpkt.udp.UDP):
            claimed = inner.ulen if first_fragment else transport_len
            payload_len = max(claimed - 8, len(inner.data))
            return Segment(
                ts, "udp", packet.src, inner.sport, packet.dst, inner.dport, bytes(inner.data),
                payload_len, context=vlans,
            )
        return _NO_SEGMENT_REASONS.get(getattr(packet, "p", None), "not TCP or UDP")
    return "tunnel"


_NO_SEGMENT_REASONS = {
    _IP_PROTO_TCP: "truncated transport header",
    _IP_PROTO_UDP: "truncated transport header",
    _IP_PROTO_GRE: "tunnel",
    _IP_PROTO_IPIP: "tunnel",
    _IP_PROTO_IPV6: "tunnel",
}


def _ip_framing(packet: dpkt.Packet) -> tuple[bool, int] | str:
    """(is a first fragment, transport length the IP header claims), or why to skip it.

    A first IP fragment gives the datagram's start and, from the UDP header, its full length (a
    TCP segment's is unknown: taken as one byte more than captured), so the head stops there
    with the gap flag set unless the fragment carries N bytes. Later fragments are skipped.
    """
    if isinstance(packet, dpkt.ip.IP):
        if packet.offset:
            return "IP fragment (not first)"
        first_fragment = bool(packet.mf)
        transport_len = packet.len - (packet._v_hl & 0x0F) * 4
    else:
        fragment = packet.extension_hdrs.get(_IP_PROTO_IPV6_FRAGMENT)
        if fragment is not None and fragment.frag_off:
            return "IP fragment (not first)"
        first_fragment = fragment is not None and bool(fragment.m_flag)
        transport_len = packet.plen - sum(ext.length for ext in packet.all_extension_headers)
    if transport_len <= 0:  # length 0: TCP segmentation offload, the frame has it all
        transport_len = len(packet.data)
    return first_fragment, transport_len
