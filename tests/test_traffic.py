"""The traffic generator: real clients and servers over loopback, captured by the relay."""

from __future__ import annotations

import dataclasses
import os
import re
import socket

import pytest

from headbits.cli import main
from headbits.common.avro import read_heads_file
from headbits.common.protocols import expected_protocol
from headbits.traffic import ANOMALIES, PROTOCOLS, generate, generate_anomalies
from headbits.traffic import dns as dns_traffic
from headbits.traffic import tls as tls_traffic
from headbits.traffic.generator import plan_sessions, run_sessions
from headbits.traffic.registry import TRAFFIC
from headbits.traffic.relay import bind_preferring

SESSIONS = 6
IS_ROOT = os.geteuid() == 0  # well-known ports below 1024 need root; otherwise ephemeral


@pytest.fixture(scope="module")
def heads_by_protocol():
    heads = generate(sessions_per_protocol=SESSIONS, seed=11, progress=False)
    name_of_services = {protocol.services: name for name, protocol in TRAFFIC.items()}
    assert len(name_of_services) == len(TRAFFIC)  # the services tell the protocols apart
    by_protocol: dict[str, list] = {name: [] for name in PROTOCOLS}
    for head in heads:
        by_protocol[name_of_services[head.services]].append(head)
    return heads, by_protocol


def test_every_protocol_yields_one_valid_head_per_session(heads_by_protocol):
    heads, by_protocol = heads_by_protocol
    assert len(heads) == SESSIONS * len(PROTOCOLS)
    assert len({head.uid for head in heads}) == len(heads)
    for name, protocol in TRAFFIC.items():
        assert len(by_protocol[name]) == SESSIONS, name
        for head in by_protocol[name]:
            head.validate()
            assert re.fullmatch(r"G[0-9A-Za-z]{16}", head.uid)
            assert head.sensor == "generated"
            assert head.services == protocol.services
            assert 0 < len(head.orig_head) <= 64 and 0 < len(head.resp_head) <= 64
            assert head.orig_bytes_seen >= len(head.orig_head)
            assert head.resp_bytes_seen >= len(head.resp_head)
            assert not head.orig_gap and not head.resp_gap
            assert head.resp_h.startswith("127.") and head.orig_h.startswith("127.")
            if IS_ROOT:
                assert head.resp_p == protocol.port, name


def test_tls_heads_are_client_and_server_hellos(heads_by_protocol):
    for head in heads_by_protocol[1]["tls"]:
        assert head.orig_head[:2] == b"\x16\x03" and head.orig_head[5] == 1
        assert head.resp_head[:2] == b"\x16\x03" and head.resp_head[5] == 2


def test_tls_versions_are_negotiated_as_planned_and_visible_on_the_wire():
    base = plan_sessions(tls_traffic.PROTOCOL, 1, seed=5)[0]
    tls13 = dataclasses.replace(base, min_version="TLSv1_3", max_version="TLSv1_3")
    tls12 = dataclasses.replace(base, min_version="TLSv1_2", max_version="TLSv1_2")
    (head13, version13), (head12, version12) = run_sessions(tls_traffic.PROTOCOL, [tls13, tls12])
    assert (version13, version12) == ("TLSv1.3", "TLSv1.2")
    # TLS 1.3: the ServerHello echoes the client's 32-byte legacy session id (from byte 43).
    assert head13.orig_head[43] == 32
    assert head13.resp_head[43:64] == head13.orig_head[43:64]
    # TLS 1.2 from a 1.3-capable server: the downgrade sentinel ends the server random.
    assert head12.resp_head[35:43] == b"DOWNGRD\x01"


def test_text_protocols_start_as_their_rfcs_say(heads_by_protocol):
    by_protocol = heads_by_protocol[1]
    methods = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")
    for head in by_protocol["http"]:
        assert head.orig_head.startswith(methods)
        assert head.resp_head.startswith(b"HTTP/1.1 ")
    for head in by_protocol["ssh"]:
        assert head.orig_head.startswith(b"SSH-2.0-") and head.resp_head.startswith(b"SSH-2.0-")
    for head in by_protocol["smtp"]:
        assert head.resp_head.startswith(b"220 ")
        assert head.orig_head.upper().startswith((b"EHLO ", b"HELO "))  # smtplib: "ehlo"
    for head in by_protocol["ftp"]:
        assert head.resp_head.startswith(b"220 ") and head.orig_head.startswith(b"USER ")
    for head in by_protocol["websocket"]:
        assert head.orig_head.startswith(b"GET /")
        assert head.resp_head.startswith(b"HTTP/1.1 101 Switching Protocols")


def test_binary_protocols_frame_as_specified(heads_by_protocol):
    by_protocol = heads_by_protocol[1]
    for head in by_protocol["grpc"]:
        assert head.orig_head.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert head.resp_head[3] == 0x04  # the server's first frame is SETTINGS
    for head in by_protocol["modbus"]:
        assert head.orig_head[2:4] == b"\x00\x00" == head.resp_head[2:4]  # MBAP protocol id
        assert head.orig_head[:2] == head.resp_head[:2]  # transaction id echoed
        assert head.orig_head[6] == head.resp_head[6]  # unit id echoed


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dns_responses_match_their_queries(transport):
    plans = [dataclasses.replace(p, transport=transport)
             for p in plan_sessions(dns_traffic.PROTOCOL, 4, seed=2)]
    for (head, response), session in zip(run_sessions(dns_traffic.PROTOCOL, plans), plans,
                                         strict=True):
        assert head.transport == transport
        framing = 2 if transport == "tcp" else 0
        query, answer = head.orig_head[framing:], head.resp_head[framing:]
        assert int.from_bytes(query[:2]) == session.query_id == response.id
        assert int.from_bytes(answer[:2]) == session.query_id
        assert query[2] & 0x80 == 0 and answer[2] & 0x80 == 0x80  # QR: query, then response
        question_end = min(len(query), len(answer), 12 + len(session.qname))
        assert answer[12:question_end] == query[12:question_end]


def test_plans_vary_across_sessions_and_repeat_with_the_seed():
    plans = plan_sessions(tls_traffic.PROTOCOL, 20, seed=7)
    assert len({p.sni for p in plans}) > 5
    assert len({p.tls12_suites for p in plans}) > 5
    assert plans == plan_sessions(tls_traffic.PROTOCOL, 20, seed=7)
    assert plans != plan_sessions(tls_traffic.PROTOCOL, 20, seed=8)


def test_the_seed_reproduces_the_requests_on_the_wire():
    def request_lines(seed: int) -> list[bytes]:
        heads = generate(["http"], sessions_per_protocol=8, seed=seed, progress=False)
        return [head.orig_head.split(b"\r\n")[0] for head in heads]

    first = request_lines(3)
    assert len(set(first)) > 3
    assert first == request_lines(3)
    assert first != request_lines(4)


def test_anomalies_have_no_service_and_sit_on_odd_ports():
    heads = generate_anomalies(sessions=len(ANOMALIES), seed=1)
    assert len(heads) == len(ANOMALIES)
    assert all(head.services == () for head in heads)
    if IS_ROOT:
        assert [head.resp_p for head in heads] == [anomaly.port for anomaly in ANOMALIES]
    for head, anomaly in zip(heads, ANOMALIES, strict=True):
        expectation = expected_protocol(head.services, head.transport, head.resp_p)
        assert expectation.source == "port"
        assert expectation.protocol != anomaly.protocol.name
    assert heads[0].orig_head.startswith(b"SSH-2.0-")  # ssh on 443, as declared


def test_relay_falls_back_to_an_ephemeral_port_when_the_preferred_one_is_taken():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        taken = holder.getsockname()[1]
        with bind_preferring(socket.SOCK_STREAM, "127.0.0.1", taken) as relay_socket:
            port = relay_socket.getsockname()[1]
    assert port not in (taken, 0)


def test_unknown_protocol_is_refused_with_the_known_ones_named():
    with pytest.raises(ValueError, match="choose from tls"):
        generate(["gopher"], sessions_per_protocol=1, progress=False)


def test_cli_writes_an_avro_file_of_heads(tmp_path):
    out = tmp_path / "heads.avro"
    code = main(["generate", "--out", str(out), "--protocols", "dns,smtp",
                 "--sessions-per-protocol", "3", "--anomalies", "2", "--quiet"])
    assert code == 0
    heads = list(read_heads_file(out))
    assert len(heads) == 8
    assert sum(head.services == () for head in heads) == 2
    assert main(["generate", "--out", str(out), "--protocols", "gopher", "--quiet"]) == 2
