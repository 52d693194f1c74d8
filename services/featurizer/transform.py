"""PayloadHead records -> feature records: the featurizer's pure part (no Kafka here).

A feature record carries the packed heads at N = 64 (the scorer cuts them to its model's N), the
bytes present per direction (the validity mask in packed form) and what the connection is
expected to be (Zeek's confirmed service, else the port). Records that break the PayloadHead
contract (missing or mistyped fields, oversize heads) are rejected with the reason, never packed.

The contract is `PayloadHead.from_dict(record).validate()`. Building a PayloadHead per record
costs more than everything else the featurizer does, so a batch is first screened column by
column; only the rows the screen cannot clear take the PayloadHead route, which then decides (and
words the reason) exactly as before. The screen only ever sends rows to that route, never past it.
"""

from __future__ import annotations

import functools
import operator

import numpy as np

from headbits.common.protocols import Expectation, expected_protocol
from headbits.common.records import MAX_HEAD_BYTES, TRANSPORTS, InvalidRecord, PayloadHead
from headbits.featurizer.bits import pack_heads

FEATURE_N = MAX_HEAD_BYTES
"""Bytes per direction on the features topic: the widest N, so every model can read it."""

DECODED_TYPES: dict[str, frozenset[type]] = {
    "uid": frozenset({str}), "ts": frozenset({float, int}), "sensor": frozenset({str}),
    "orig_h": frozenset({str}), "orig_p": frozenset({int}), "resp_h": frozenset({str}),
    "resp_p": frozenset({int}), "transport": frozenset({str}),
    "services": frozenset({list, tuple}), "orig_head": frozenset({bytes}),
    "resp_head": frozenset({bytes}), "orig_bytes_seen": frozenset({int}),
    "resp_bytes_seen": frozenset({int}), "orig_gap": frozenset({bool}),
    "resp_gap": frozenset({bool}),
}
"""Exact Python types of each PayloadHead field as an Avro decoder yields them; every one is a
type `PayloadHead.from_dict` accepts, so a column of only these types passes its type checks."""


@functools.lru_cache(maxsize=65536)
def _expectation(services: tuple[str, ...], transport: str, resp_p: int) -> Expectation:
    return expected_protocol(services, transport, resp_p)


def _columns(records: list[dict]) -> dict[str, list] | None:
    """Field -> values of every record, or None when a field is missing or of another type."""
    try:
        columns = {name: [record[name] for record in records] for name in DECODED_TYPES}
    except KeyError:
        return None
    for name, types in DECODED_TYPES.items():
        if not set(map(type, columns[name])) <= types:
            return None
    return columns


def _port_ok(ports: list[int]) -> np.ndarray:
    return np.fromiter((0 <= port <= 65535 for port in ports), bool, len(ports))


def _head_ok(heads: list[bytes], seen: list[int]) -> np.ndarray:
    lengths = list(map(len, heads))
    fits = np.array(lengths, np.int64) <= MAX_HEAD_BYTES
    return fits & np.fromiter(map(operator.ge, seen, lengths), bool, len(heads))


def _cleared_rows(columns: dict[str, list]) -> np.ndarray:
    """bool per row: passes every check of `PayloadHead.validate` (columns of decoded types)."""
    count = len(columns["uid"])
    cleared = np.fromiter(map(bool, columns["uid"]), bool, count)
    cleared &= np.fromiter(map(TRANSPORTS.__contains__, columns["transport"]), bool, count)
    cleared &= _port_ok(columns["orig_p"]) & _port_ok(columns["resp_p"])
    cleared &= _head_ok(columns["orig_head"], columns["orig_bytes_seen"])
    cleared &= _head_ok(columns["resp_head"], columns["resp_bytes_seen"])
    return cleared


def screen_heads(records: list[dict]) -> tuple[list[int], list[tuple[int, str]]]:
    """Indices of the records that are valid PayloadHeads, and (index, reason) for the others."""
    columns = _columns(records)
    cleared = _cleared_rows(columns) if columns else np.zeros(len(records), bool)
    kept, rejected = [], []
    for index in np.flatnonzero(~cleared).tolist():
        try:
            PayloadHead.from_dict(records[index]).validate()
            kept.append(index)
        except InvalidRecord as error:
            rejected.append((index, f"invalid PayloadHead: {error}"))
    return sorted(np.flatnonzero(cleared).tolist() + kept), rejected


def feature_records(heads: list[PayloadHead], n: int = FEATURE_N) -> list[dict]:
    """One Features record (schemas/features.avsc) per head."""
    return _pack_records([head.to_dict() for head in heads], n)


def _pack_records(records: list[dict], n: int) -> list[dict]:
    """Features records of valid PayloadHead records, all heads packed in one numpy pass."""
    if not records:
        return []
    batch = pack_heads([r["orig_head"] for r in records], [r["resp_head"] for r in records], n)
    packed = batch.head_bytes.tobytes()
    width = 2 * n
    lengths = batch.head_lengths.tolist()
    features = []
    for row, (record, (orig_length, resp_length)) in enumerate(zip(records, lengths, strict=True)):
        expectation = _expectation(
            tuple(record["services"] or ()), record["transport"], record["resp_p"]
        )
        features.append({
            "uid": record["uid"], "ts": record["ts"], "sensor": record["sensor"],
            "orig_h": record["orig_h"], "orig_p": record["orig_p"],
            "resp_h": record["resp_h"], "resp_p": record["resp_p"],
            "transport": record["transport"],
            "expected_protocol": expectation.protocol, "expected_source": expectation.source,
            "n": n, "head_bytes": packed[row * width : (row + 1) * width],
            "orig_length": orig_length, "resp_length": resp_length,
            "orig_gap": record["orig_gap"], "resp_gap": record["resp_gap"],
        })
    return features


def featurize(records: list[dict], n: int = FEATURE_N) -> tuple[list[dict], list[tuple[int, str]]]:
    """Feature records for the valid heads, and (input index, reason) for the rejected ones."""
    kept, rejected = screen_heads(records)
    return _pack_records([records[index] for index in kept], n), rejected
