"""TCP/UDP head reassembly: hand-built segments per rule; tshark stream follow on real captures."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from headbits.collector.pcap import read_capture
from headbits.collector.reassembly import (
    LAND_REASON,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    ConnectionTable,
    Segment,
    connection_uid,
)

CLIENT = (socket.inet_aton("10.0.0.1"), 40000)
SERVER = (socket.inet_aton("10.0.0.2"), 80)
CLIENT_ISN = 1000
SERVER_ISN = 4_294_967_000  # wraps past 2**32 within the first bytes


def tcp(sender, flags, seq, payload=b"", *, ts=1.0, ack=None, payload_len=None):
    receiver = SERVER if sender == CLIENT else CLIENT
    if ack is None:  # acknowledge the peer's stream start, not more
        ack = (SERVER_ISN if sender == CLIENT else CLIENT_ISN) + 1
    return Segment(
        ts, "tcp", sender[0], sender[1], receiver[0], receiver[1], payload,
        len(payload) if payload_len is None else payload_len, flags, seq % 2**32, ack, (),
    )


def udp(sender, payload, ts=1.0, payload_len=None):
    receiver = SERVER if sender == CLIENT else CLIENT
    return Segment(
        ts, "udp", sender[0], sender[1], receiver[0], receiver[1], payload,
        len(payload) if payload_len is None else payload_len,
    )


def handshake():
    return [
        tcp(CLIENT, TCP_SYN, CLIENT_ISN),
        tcp(SERVER, TCP_SYN | TCP_ACK, SERVER_ISN, ack=CLIENT_ISN + 1),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, ack=SERVER_ISN + 1),
    ]


def heads_of(segments, n=64):
    table = ConnectionTable(n=n, sensor="test")
    for segment in segments:
        table.add(segment)
    return table.finish()


def only_head(segments, n=64):
    (head,) = heads_of(segments, n)
    return head.validate(n)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_land_segment_is_refused_with_a_reason(transport: str):
    """Source endpoint == destination endpoint: no responder exists to orient the connection."""
    table = ConnectionTable(sensor="test")
    land = Segment(1.0, transport, CLIENT[0], CLIENT[1], CLIENT[0], CLIENT[1], b"x", 1,
                   TCP_SYN if transport == "tcp" else 0)
    assert table.add(land) == LAND_REASON
    assert table.add(udp(CLIENT, b"ok")) is None
    assert [head.orig_head for head in table.finish()] == [b"ok"]


def test_in_order_stream_is_cut_at_n_and_counts_all_bytes():
    request = bytes(range(50))
    segments = [
        *handshake(),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, request),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 51, request),
        tcp(SERVER, TCP_ACK, SERVER_ISN + 1, b"HTTP/1.1 200 OK\r\n"),
    ]
    head = only_head(segments)
    assert head.orig_head == (request + request)[:64]
    assert head.resp_head == b"HTTP/1.1 200 OK\r\n"
    assert (head.orig_bytes_seen, head.resp_bytes_seen) == (100, 17)
    assert (head.orig_gap, head.resp_gap) == (False, False)
    endpoints = (head.orig_h, head.orig_p, head.resp_h, head.resp_p)
    assert endpoints == ("10.0.0.1", 40000, "10.0.0.2", 80)


def test_out_of_order_and_retransmitted_segments_land_by_sequence_number():
    segments = [
        *handshake(),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 6, b"world"),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, b"hello"),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, b"hello"),
        tcp(SERVER, TCP_ACK, SERVER_ISN + 4, b"def"),  # crosses the 2**32 wrap
        tcp(SERVER, TCP_ACK, SERVER_ISN + 1, b"abc"),
    ]
    head = only_head(segments)
    assert head.orig_head == b"helloworld"
    assert head.resp_head == b"abcdef"
    assert head.orig_bytes_seen == 10
    assert not head.orig_gap and not head.resp_gap


def test_overlapping_segments_keep_the_first_received_bytes():
    segments = [
        *handshake(),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 4, b"XXXX"),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, b"abcdefghij"),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 8, b"YYYYYY"),
    ]
    assert only_head(segments).orig_head == b"abcXXXXhijYYY"


def test_a_hole_stops_the_head_and_sets_the_gap_flag():
    segments = [
        *handshake(),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, b"first"),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 11, b"third"),
    ]
    head = only_head(segments)
    assert head.orig_head == b"first"
    assert head.orig_gap
    assert head.orig_bytes_seen == 15


def test_a_peer_ack_beyond_the_captured_bytes_reveals_a_lost_segment():
    segments = [
        *handshake(),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, b"GET"),
        tcp(SERVER, TCP_ACK, SERVER_ISN + 1, b"ok", ack=CLIENT_ISN + 20),
    ]
    head = only_head(segments)
    assert head.orig_head == b"GET"
    assert head.orig_gap
    assert not head.resp_gap


def test_a_snap_length_cut_segment_ends_the_head_with_a_gap():
    segments = [
        *handshake(),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, b"abcd", payload_len=1000),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1001, b"next"),
    ]
    head = only_head(segments)
    assert head.orig_head == b"abcd"
    assert head.orig_gap
    assert head.orig_bytes_seen == 1004


def test_missing_syn_starts_at_first_sequence_number_with_gap_flag():
    segments = [
        tcp(CLIENT, TCP_ACK, 5000, b"mid-stream", ack=7000),
        tcp(SERVER, TCP_ACK, 7000, b"reply", ack=5010),
    ]
    head = only_head(segments)
    assert (head.orig_head, head.resp_head) == (b"mid-stream", b"reply")
    assert head.orig_gap and head.resp_gap
    assert head.orig_h == "10.0.0.1"  # no handshake: the first packet's sender


def test_syn_ack_orients_a_connection_whose_syn_was_not_captured():
    segments = [
        tcp(SERVER, TCP_SYN | TCP_ACK, SERVER_ISN, ack=CLIENT_ISN + 1),
        tcp(SERVER, TCP_ACK, SERVER_ISN + 1, b"220 banner\r\n"),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, b"EHLO x\r\n"),
    ]
    head = only_head(segments)
    assert (head.orig_h, head.resp_p) == ("10.0.0.1", 80)
    assert head.resp_head == b"220 banner\r\n" and not head.resp_gap
    assert head.orig_head == b"EHLO x\r\n" and head.orig_gap


def test_only_bytes_within_n_are_kept():
    segments = [*handshake(), tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, bytes(range(200)))]
    head = only_head(segments, n=16)
    assert head.orig_head == bytes(range(16))
    assert head.orig_bytes_seen == 200
    assert not head.orig_gap


def test_new_syn_after_fin_or_idle_timeout_is_a_new_connection():
    first = [*handshake(), tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, b"one")]
    closing = [tcp(CLIENT, TCP_FIN | TCP_ACK, CLIENT_ISN + 4)]
    again = [
        tcp(CLIENT, TCP_SYN, 90_000, ts=2.0),
        tcp(CLIENT, TCP_ACK, 90_001, b"two", ts=2.0),
    ]
    late = [tcp(CLIENT, TCP_ACK, 90_004, b"three", ts=2.0 + 301)]
    heads = heads_of(first + closing + again + late)
    assert [head.orig_head for head in heads] == [b"one", b"two", b"three"]
    assert len({head.uid for head in heads}) == 3
    assert heads[2].orig_gap  # the idle split lost the start of that stream
    # Without the FIN a SYN does not split (it is a retransmission or a port reuse mid-flow).
    assert len(heads_of(first + again)) == 1


def test_rst_then_syn_retry_does_not_emit_empty_connections():
    table = ConnectionTable(sensor="test")
    for segment in [
        tcp(CLIENT, TCP_SYN, CLIENT_ISN),
        tcp(SERVER, TCP_RST | TCP_ACK, 0, ack=CLIENT_ISN + 1),
        *handshake(),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, b"x"),
    ]:
        table.add(segment)
    assert [head.orig_head for head in table.finish()] == [b"x"]
    assert table.connections_without_payload == 1


def test_udp_concatenates_first_datagrams_per_direction():
    segments = [
        udp(CLIENT, b"q1"),
        udp(SERVER, b"r1"),
        udp(CLIENT, b"q2" * 40),
        udp(CLIENT, b"q3"),
    ]
    head = only_head(segments)
    assert head.orig_head == (b"q1" + b"q2" * 40)[:64]
    assert head.resp_head == b"r1"
    assert head.orig_bytes_seen == 84
    assert not head.orig_gap


def test_udp_datagram_cut_by_snap_length_stops_the_head():
    head = only_head([udp(CLIENT, b"abc", payload_len=500), udp(CLIENT, b"next")])
    assert head.orig_head == b"abc"
    assert head.orig_gap
    assert head.orig_bytes_seen == 504


def test_udp_idle_timeout_splits_connections():
    heads = heads_of([udp(CLIENT, b"a", ts=1.0), udp(CLIENT, b"b", ts=62.0)])
    assert [head.orig_head for head in heads] == [b"a", b"b"]


def test_uid_is_zeek_like_and_deterministic():
    uid = connection_uid("s", "tcp", ("10.0.0.1", 1), ("10.0.0.2", 2), 1.5)
    assert re.fullmatch(r"C[0-9A-Za-z]{17}", uid)
    assert uid == connection_uid("s", "tcp", ("10.0.0.1", 1), ("10.0.0.2", 2), 1.5)
    assert uid != connection_uid("s", "tcp", ("10.0.0.1", 1), ("10.0.0.2", 2), 1.6)
    assert uid != connection_uid("t", "tcp", ("10.0.0.1", 1), ("10.0.0.2", 2), 1.5)
    assert uid != connection_uid("s", "tcp", ("10.0.0.1", 1), ("10.0.0.2", 2), 1.5, context=(10,))


# tshark's "follow,tcp,raw" prints each stream's data as hex lines: the first node's unindented,
# the second node's indented by a tab.
TSHARK_CAPTURES = [
    "arkime/http-basicauth.pcap",
    "arkime/curl-enabled-tls13.pcap",
    "arkime/ssh2.pcap",
    "arkime/smtp-nospaces.pcap",
    "zeek-traces/ftp/ipv6-retr-samba.pcap",
]


def tshark_streams(capture: Path) -> dict[frozenset, dict[tuple[str, int], bytes]]:
    """{frozenset of both endpoints: {endpoint: that endpoint's stream bytes}} per TCP stream."""
    listing = subprocess.run(
        ["tshark", "-r", str(capture), "-T", "fields", "-e", "tcp.stream"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    arguments = []
    for stream in sorted({int(value) for value in listing if value}):
        arguments += ["-z", f"follow,tcp,raw,{stream}"]
    output = subprocess.run(
        ["tshark", "-r", str(capture), "-q", *arguments],
        capture_output=True, text=True, check=True,
    ).stdout
    streams = {}
    for block in output.split("Follow: tcp,raw")[1:]:
        nodes = re.findall(r"^Node [01]: \[?(.*?)\]?:(\d+)$", block, re.MULTILINE)
        if len(nodes) != 2 or not nodes[0][0]:
            continue
        first, second = ((address, int(port)) for address, port in nodes)
        data = {first: b"", second: b""}
        for line in block.splitlines():
            if re.fullmatch(r"\t?[0-9a-f]+", line):
                sender = second if line.startswith("\t") else first
                data[sender] += bytes.fromhex(line.strip())
        streams[frozenset((first, second))] = data
    return streams


@pytest.mark.shared_data
@pytest.mark.parametrize("relative", TSHARK_CAPTURES)
def test_heads_equal_tshark_follow_prefixes(shared_pcaps: Path, relative: str):
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed: it is the reference for TCP stream reassembly")
    capture = shared_pcaps / relative
    expected = tshark_streams(capture)
    heads = [head for head in read_capture(capture).heads if head.transport == "tcp"]
    assert heads, f"{relative}: no TCP heads"
    for head in heads:
        orig, resp = (head.orig_h, head.orig_p), (head.resp_h, head.resp_p)
        stream = expected[frozenset((orig, resp))]
        assert head.orig_head == stream[orig][:64], f"{relative} {head.uid} orig"
        assert head.resp_head == stream[resp][:64], f"{relative} {head.uid} resp"
    compared = sum(1 for data in expected.values() if any(data.values()))
    assert compared == len(heads)


def test_the_peer_acknowledging_a_fin_is_no_gap():
    """A FIN takes a sequence number but no byte: its ACK must not look like a missing byte
    (the short connections closed before N bytes would all be flagged mid-stream)."""
    request, response = b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\n"
    client_end = CLIENT_ISN + 1 + len(request)
    server_end = SERVER_ISN + 1 + len(response)
    (head,) = heads_of([
        *handshake(),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, request, ack=SERVER_ISN + 1),
        tcp(SERVER, TCP_ACK | TCP_FIN, SERVER_ISN + 1, response, ack=client_end),
        tcp(CLIENT, TCP_ACK | TCP_FIN, client_end, ack=server_end + 1),  # acks the server FIN
        tcp(SERVER, TCP_ACK, server_end + 1, ack=client_end + 1),  # acks the client FIN
    ])
    assert (head.orig_head, head.resp_head) == (request, response)
    assert not head.orig_gap and not head.resp_gap


def test_an_acknowledged_byte_never_seen_is_still_a_gap():
    request = b"GET / HTTP/1.0\r\n\r\n"
    (head,) = heads_of([
        *handshake(),
        tcp(CLIENT, TCP_ACK, CLIENT_ISN + 1, request[:5], ack=SERVER_ISN + 1),
        # the server acknowledges the whole request, but its tail was never captured
        tcp(SERVER, TCP_ACK, SERVER_ISN + 1, ack=CLIENT_ISN + 1 + len(request)),
    ])
    assert head.orig_head == request[:5] and head.orig_gap

