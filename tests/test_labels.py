"""Labels: Zeek conn.log joins (TSV baselines, JSON lines) and the corpus's LABELS.tsv."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from headbits.collector.labels import (
    ConnLogEntry,
    label_heads,
    read_conn_log,
    read_dataset_labels,
)
from headbits.collector.pcap import read_capture
from headbits.common.protocols import expected_protocol
from headbits.common.records import PayloadHead

pytestmark = pytest.mark.shared_data

FTP_CAPTURE = "zeek-traces/ftp/ipv4"


def head(**changes) -> PayloadHead:
    base = PayloadHead(
        uid="C" + "a" * 17, ts=100.0, sensor="s", orig_h="10.0.0.1", orig_p=1234,
        resp_h="10.0.0.2", resp_p=8080, transport="tcp", services=(), orig_head=b"x",
        resp_head=b"", orig_bytes_seen=1, resp_bytes_seen=0, orig_gap=False, resp_gap=False,
    )
    return dataclasses.replace(base, **changes)


def entry(**changes) -> ConnLogEntry:
    base = ConnLogEntry(
        uid=None, ts=100.2, transport="tcp", orig_h="10.0.0.1", orig_p=1234, resp_h="10.0.0.2",
        resp_p=8080, services=("http",),
    )
    return dataclasses.replace(base, **changes)


def test_tsv_baseline_join_labels_every_connection(shared_pcaps: Path):
    heads = read_capture(shared_pcaps / f"{FTP_CAPTURE}.pcap").heads
    entries = read_conn_log(shared_pcaps / f"{FTP_CAPTURE}.conn.log")
    assert len(entries) == 5 and all(e.ts is None for e in entries)  # btest masks timestamps
    labelled = label_heads(heads, entries)
    by_port = {head.resp_p: head.services for head in labelled}
    assert by_port[21] == ("ftp",)
    assert by_port[56666] == by_port[33582] == ("ftp-data",)
    assert all(head.services for head in labelled)
    control = next(head for head in labelled if head.resp_p == 21)
    assert expected_protocol(control.services, "tcp", control.resp_p).source == "zeek"
    assert [head.uid for head in labelled] == [head.uid for head in heads]


def test_json_conn_log_joins_by_endpoints_and_time(shared_pcaps: Path, tmp_path: Path):
    heads = read_capture(shared_pcaps / f"{FTP_CAPTURE}.pcap").heads
    control = next(head for head in heads if head.resp_p == 21)
    data = next(head for head in heads if head.resp_p == 56666)
    rows = [
        {  # nested id, as some Zeek JSON exports write it
            "ts": control.ts + 0.0004, "uid": "CJson1", "proto": "tcp", "service": "ftp",
            "id": {"orig_h": control.orig_h, "orig_p": control.orig_p,
                   "resp_h": control.resp_h, "resp_p": control.resp_p},
        },
        {  # flat keys, Zeek's default; an hour off, so it is another connection
            "ts": data.ts + 3600, "uid": "CJson2", "proto": "tcp", "service": "ftp-data",
            "id.orig_h": data.orig_h, "id.orig_p": data.orig_p,
            "id.resp_h": data.resp_h, "id.resp_p": data.resp_p,
        },
    ]
    log = tmp_path / "conn.log"
    log.write_bytes(b"\n".join(orjson.dumps(row) for row in rows) + b"\n")
    entries = read_conn_log(log)
    assert [e.uid for e in entries] == ["CJson1", "CJson2"]
    labelled = {head.uid: head.services for head in label_heads(heads, entries)}
    assert labelled[control.uid] == ("ftp",)
    assert labelled[data.uid] == ()


def test_zeek_cut_baseline_without_endpoints_labels_the_single_flow(shared_pcaps: Path):
    capture = shared_pcaps / "zeek-traces/http/deeply-nested-mime"
    heads = read_capture(capture.with_suffix(".pcap")).heads
    entries = read_conn_log(capture.with_suffix(".conn.log"))
    assert not entries[0].has_endpoints()
    (labelled,) = label_heads(heads, entries)
    assert labelled.services == ("http",)


def test_join_rules_without_the_corpus():
    forward = entry()
    reversed_entry = entry(orig_h="10.0.0.2", orig_p=8080, resp_h="10.0.0.1", resp_p=1234)
    assert label_heads([head()], [forward])[0].services == ("http",)
    assert label_heads([head()], [reversed_entry])[0].services == ("http",)
    assert label_heads([head()], [entry(transport="udp")])[0].services == ()
    assert label_heads([head()], [entry(ts=200.0)])[0].services == ()
    assert label_heads([head()], [entry(orig_p=None, ts=None)])[0].services == ("http",)
    # Two connections on one 5-tuple: each entry goes to the one closest in time.
    early, late = head(uid="C" + "b" * 17, ts=100.0), head(uid="C" + "c" * 17, ts=150.0)
    labelled = label_heads(
        [early, late], [entry(ts=150.1, services=("ssh",)), entry(ts=99.9, services=("http",))]
    )
    assert [h.services for h in labelled] == [("http",), ("ssh",)]
    # Without endpoints and with more than one flow, nothing can be joined.
    endpointless = entry(orig_h=None, orig_p=None, resp_h=None, resp_p=None, transport=None)
    assert [h.services for h in label_heads([early, late], [endpointless])] == [(), ()]


def test_tsv_reader_honours_header_directives(tmp_path: Path):
    log = tmp_path / "conn.log"
    log.write_text(
        "#separator \\x7c\n#unset_field|?\n#empty_field|EMPTY\n"
        "#fields|ts|id.orig_h|id.orig_p|id.resp_h|id.resp_p|proto|service\n"
        "100.1|10.0.0.1|1234|10.0.0.2|8080|tcp|ssl,http\n"
        "100.2|10.0.0.1|1235|10.0.0.2|8080|tcp|?\n"
        "100.3|10.0.0.1|1236|10.0.0.2|8080|tcp|EMPTY\n"
    )
    entries = read_conn_log(log)
    assert [e.services for e in entries] == [("ssl", "http"), (), ()]
    assert entries[0].ts == pytest.approx(100.1) and entries[0].orig_p == 1234


def test_dataset_labels_match_either_orientation(shared_pcaps: Path):
    labels = read_dataset_labels(shared_pcaps / "LABELS.tsv")
    (ssh,) = read_capture(shared_pcaps / "arkime/ssh2.pcap").heads
    assert labels.label_for("arkime/ssh2.pcap", ssh) == ("ssh", "arkime")
    flipped = dataclasses.replace(
        ssh, orig_h=ssh.resp_h, orig_p=ssh.resp_p, resp_h=ssh.orig_h, resp_p=ssh.orig_p
    )
    assert labels.label_for("arkime/ssh2.pcap", flipped) == ("ssh", "arkime")
    assert labels.label_for("arkime/other.pcap", ssh) is None
    assert labels.label_for("arkime/ssh2.pcap", dataclasses.replace(ssh, transport="udp")) is None


def test_dataset_labels_fall_back_to_tshark_as_source(shared_pcaps: Path):
    labels = read_dataset_labels(shared_pcaps / "LABELS.tsv")
    sources = {source for _, source in labels.flows.values()}
    assert {"tshark", "zeek", "ndpi", "arkime"} <= sources
    assert len(labels.flows) > 5000
