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
import pyarrow as pa
import pyarrow.compute as pc

from headbits.common.columnar import binary_column, pack_head_columns, table_of
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


# The .v2 path: a decoded table of PayloadHeads -> a table of Features, column by column --------

def _table_cleared(heads: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bool per row: passes `PayloadHead.validate`, orig and resp head lengths), from columns
    (a decoded table is typed and null-free, so the type checks of `from_dict` hold already)."""
    def numbers(name: str) -> np.ndarray:
        return heads.column(name).to_numpy()

    cleared = pc.binary_length(heads.column("uid")).to_numpy() > 0
    cleared &= pc.is_in(heads.column("transport"), value_set=pa.array(TRANSPORTS)).to_numpy()
    for name in ("orig_p", "resp_p"):
        port = numbers(name)
        cleared &= (port >= 0) & (port <= 65535)
    lengths = []
    for direction in ("orig", "resp"):
        length = pc.binary_length(heads.column(f"{direction}_head")).to_numpy().astype(np.int64)
        cleared &= (length <= MAX_HEAD_BYTES) & (numbers(f"{direction}_bytes_seen") >= length)
        lengths.append(length)
    return cleared, lengths[0], lengths[1]


def _expectation_columns(heads: pa.Table) -> tuple[pa.Array, pa.Array]:
    """(expected_protocol, expected_source) per row, computed once per distinct (services,
    transport, port): a batch holds few distinct ones, so no Python runs per row."""
    if heads.num_rows == 0:
        return pa.array([], pa.string()), pa.array([], pa.string())
    key = pc.binary_join_element_wise(
        pc.binary_join(heads.column("services"), "\x00"), heads.column("transport"),
        pc.cast(heads.column("resp_p"), pa.string()), "\x01")
    encoded = pc.dictionary_encode(key)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    codes = encoded.indices.to_numpy()
    _, first_rows = np.unique(codes, return_index=True)
    firsts = heads.take(pa.array(first_rows)).select(["services", "transport", "resp_p"])
    found = [_expectation(tuple(services), transport, port) for services, transport, port in
             zip(*(firsts.column(name).to_pylist() for name in firsts.column_names), strict=True)]
    order = np.empty(len(encoded.dictionary), np.int64)
    order[codes[first_rows]] = np.arange(len(first_rows))
    take = pa.array(order[codes])
    protocols = pa.array([e.protocol for e in found], pa.string()).take(take)
    sources = pa.array([e.source for e in found], pa.string()).take(take)
    return protocols, sources


def featurize_table(heads: pa.Table, n: int = FEATURE_N) -> tuple[pa.Table, list[tuple[int, str]]]:
    """The Features table of the valid rows of a PayloadHead table, and (row, reason) for the
    rejected ones, worded exactly as `PayloadHead.validate` words them."""
    cleared, orig_lengths, resp_lengths = _table_cleared(heads)
    rejected = []
    for row in np.flatnonzero(~cleared).tolist():
        try:
            PayloadHead.from_dict(heads.slice(row, 1).to_pylist()[0]).validate()
            cleared[row] = True  # the screen only ever sends rows to the exact check
        except InvalidRecord as error:
            rejected.append((row, f"invalid PayloadHead: {error}"))
    kept = heads if cleared.all() else heads.filter(pa.array(cleared))
    head_bytes, _, _ = pack_head_columns(kept.column("orig_head"), kept.column("resp_head"), n)
    protocols, sources = _expectation_columns(kept)
    count = kept.num_rows
    columns = {name: kept.column(name) for name in (
        "uid", "ts", "sensor", "orig_h", "orig_p", "resp_h", "resp_p", "transport",
        "orig_gap", "resp_gap")}
    columns.update({
        "expected_protocol": protocols, "expected_source": sources,
        "n": np.full(count, n, np.int32),
        "head_bytes": binary_column(head_bytes),
        "orig_length": np.minimum(orig_lengths[cleared], n).astype(np.int32),
        "resp_length": np.minimum(resp_lengths[cleared], n).astype(np.int32),
    })
    return table_of("features", columns, count), rejected
