"""Labels for reassembled heads: Zeek's conn.log `service`, and the shared corpus's LABELS.tsv.

Zeek's confirmed service is the strong label. Heads nothing joins to keep empty `services`, and
callers fall back to `headbits.common.protocols.expected_protocol` (the port map, which reports
its source as "port").

conn.log join: transport and both endpoints must agree (either orientation, since Zeek may orient
a connection whose handshake it missed differently), and the conn.log `ts` must be within a
tolerance of the head's first packet when both are known. Test baselines are often cut to a few
columns: a missing column matches anything, masked timestamps (`XXXXXXXXXX.XXXXXX`) count as
unknown, and a baseline without any endpoint column labels a capture only when the capture has a
single payload connection and the baseline names a single service.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from headbits.common.records import PayloadHead

DEFAULT_TS_TOLERANCE = 1.0
"""Seconds between conn.log `ts` and our first packet: both are the first packet's time."""

# Zeek's names first, then the renamed columns some baselines and exports use.
_COLUMN_ALIASES = {
    "id.orig_h": "orig_h",
    "id.orig_p": "orig_p",
    "id.resp_h": "resp_h",
    "id.resp_p": "resp_p",
    "src_ip": "orig_h",
    "src_port": "orig_p",
    "dst_ip": "resp_h",
    "dst_port": "resp_p",
    "proto": "transport",
    "ts": "ts",
    "uid": "uid",
    "service": "service",
}
_ENDPOINT_FIELDS = ("orig_h", "orig_p", "resp_h", "resp_p")


@dataclass(frozen=True, slots=True)
class ConnLogEntry:
    """One conn.log row; None where the log lacks the column or leaves it unset."""

    uid: str | None
    ts: float | None
    transport: str | None
    orig_h: str | None
    orig_p: int | None
    resp_h: str | None
    resp_p: int | None
    services: tuple[str, ...]

    def has_endpoints(self) -> bool:
        return any(getattr(self, name) is not None for name in _ENDPOINT_FIELDS)


def read_conn_log(path: Path) -> list[ConnLogEntry]:
    """Entries of a Zeek conn.log in TSV (with or without the `#fields` header) or JSON lines."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.lstrip().startswith("{"):
        return [_entry(_flatten(orjson.loads(line))) for line in text.splitlines() if line.strip()]
    return _read_tsv(text)


def _read_tsv(text: str) -> list[ConnLogEntry]:
    separator, unset, empty = "\t", "-", "(empty)"
    names: list[str] | None = None
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            keyword, _, value = line[1:].partition(" ")
            if keyword == "separator":
                separator = value.encode().decode("unicode_escape")
                continue
            keyword, _, value = line[1:].partition(separator)
            if keyword == "fields":
                names = value.split(separator)
            elif keyword == "unset_field":
                unset = value
            elif keyword == "empty_field":
                empty = value
            continue
        values = line.split(separator)
        if names is None:  # a zeek-cut style baseline: the first row names the columns
            names = values
            continue
        row = {
            name: None if value in (unset, empty) else value
            for name, value in zip(names, values, strict=False)
        }
        entries.append(_entry(row))
    return entries


def _flatten(record: dict, prefix: str = "") -> dict:
    """JSON conn.log rows may nest `id` ({"id": {"orig_h": ...}}) or flatten it ("id.orig_h")."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _entry(row: dict) -> ConnLogEntry:
    values = {
        _COLUMN_ALIASES[name]: value for name, value in row.items() if name in _COLUMN_ALIASES
    }
    service = values.get("service")
    if isinstance(service, list):
        services = tuple(str(name) for name in service)
    else:
        services = tuple(name for name in str(service or "").split(",") if name and name != "-")
    transport = values.get("transport")
    return ConnLogEntry(
        uid=_text(values.get("uid")),
        ts=_number(values.get("ts")),
        transport=_text(transport).lower() if _text(transport) else None,
        orig_h=_text(values.get("orig_h")),
        orig_p=_port(values.get("orig_p")),
        resp_h=_text(values.get("resp_h")),
        resp_p=_port(values.get("resp_p")),
        services=services,
    )


def _text(value: object) -> str | None:
    return None if value in (None, "", "-") else str(value)


def _number(value: object) -> float | None:
    try:
        number = float(value)  # masked btest timestamps (XXXXXXXXXX.XXXXXX) fail here
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _port(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _endpoints_match(entry: ConnLogEntry, head: PayloadHead, reverse: bool) -> bool:
    if entry.transport is not None and entry.transport != head.transport:
        return False
    ours = (
        (head.resp_h, head.resp_p, head.orig_h, head.orig_p)
        if reverse
        else (head.orig_h, head.orig_p, head.resp_h, head.resp_p)
    )
    theirs = (entry.orig_h, entry.orig_p, entry.resp_h, entry.resp_p)
    return all(value is None or value == mine for value, mine in zip(theirs, ours, strict=True))


def _time_distance(entry: ConnLogEntry, head: PayloadHead) -> float:
    return 0.0 if entry.ts is None else abs(entry.ts - head.ts)


def label_heads(
    heads: list[PayloadHead],
    entries: Iterable[ConnLogEntry],
    tolerance: float = DEFAULT_TS_TOLERANCE,
) -> list[PayloadHead]:
    """`heads` of one capture with `services` from the conn.log entries that join to them.

    Each entry labels at most one head: the closest in time among those whose endpoints match
    (forward orientation first). Heads nothing joins are returned unchanged.
    """
    labelled = list(heads)
    taken: set[int] = set()
    endpointless: list[ConnLogEntry] = []
    for entry in entries:
        if not entry.has_endpoints():
            endpointless.append(entry)
            continue
        if not entry.services:
            continue
        index = _best_match(entry, labelled, taken, tolerance)
        if index is not None:
            taken.add(index)
            labelled[index] = labelled[index].with_services(entry.services)
    named = {entry.services for entry in endpointless if entry.services}
    if len(labelled) == 1 and not taken and len(named) == 1:
        labelled[0] = labelled[0].with_services(named.pop())
    return labelled


def _best_match(
    entry: ConnLogEntry, heads: list[PayloadHead], taken: set[int], tolerance: float
) -> int | None:
    for reverse in (False, True):
        candidates = [
            index
            for index, head in enumerate(heads)
            if index not in taken
            and _endpoints_match(entry, head, reverse)
            and _time_distance(entry, head) <= tolerance
        ]
        if candidates:
            return min(candidates, key=lambda index: _time_distance(entry, heads[index]))
    return None


TSHARK_SOURCE = "tshark"
"""The label source of a corpus flow no parser (Zeek, nDPI, Arkime) covered: tshark's highest
dissected layer, chosen largely by well-known port, so it is wrong on non-standard ports and names
a STARTTLS or sslh connection by a later layer, not by its opening bytes."""


@dataclass
class DatasetLabels:
    """LABELS.tsv of the shared corpus, indexed by (file, transport, orig, resp)."""

    flows: dict[tuple[str, str, str, int, str, int], tuple[str, str]] = field(default_factory=dict)

    def label_for(self, file_rel: str, head: PayloadHead) -> tuple[str, str] | None:
        """(canonical label, label source) of the head's flow, either orientation, or None.

        The source is the oracle (zeek, ndpi, arkime) when one covers the flow, else
        `TSHARK_SOURCE`.
        """
        forward = (file_rel, head.transport, head.orig_h, head.orig_p, head.resp_h, head.resp_p)
        reverse = (file_rel, head.transport, head.resp_h, head.resp_p, head.orig_h, head.orig_p)
        return self.flows.get(forward) or self.flows.get(reverse)


def label_from_conn_log_beside(capture: Path, heads: list[PayloadHead]) -> list[PayloadHead]:
    """`heads` of `capture` labelled by the Zeek conn.log beside it (`<capture stem>.conn.log`),
    or unchanged when there is none."""
    conn_log = capture.with_name(capture.name.rsplit(".", 1)[0] + ".conn.log")
    return label_heads(heads, read_conn_log(conn_log)) if conn_log.is_file() else heads


def read_dataset_labels(labels_tsv: Path) -> DatasetLabels:
    labels = DatasetLabels()
    with Path(labels_tsv).open(newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE):
            key = (
                row["file"], row["l4"], row["orig_h"], int(row["orig_p"]),
                row["resp_h"], int(row["resp_p"]),
            )
            labels.flows.setdefault(key, (row["label"], row["oracle_kind"] or TSHARK_SOURCE))
    return labels
