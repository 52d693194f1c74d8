"""The `.v2` format of the internal topics: one Kafka message per batch of connections.

Per-record Avro costs 3-4 us per decode or encode and the Kafka client adds its own per-message
Python cost, paid three times per connection; at tens of thousands of connections per second
that is most of the pipeline's CPU. A `.v2` message is one Arrow IPC stream holding one record
batch of one sensor's rows (the message key is the sensor, so a sensor's traffic stays in one
partition, in order). Readers go from the message to numpy columns without a Python loop.

The Arrow schema of each topic is derived from the topic's Avro schema (`schemas/*.avsc`, the one
declared list of fields): same names, same order, one Arrow type per Avro type, no nulls except
where Avro allows them. So a field added to an Avro schema (with its default, as the BACKWARD
rule asks) is added to the `.v2` form without another list to edit, and a batch written before
the field existed decodes with the default filled in. Columns a reader does not know are ignored.

Every `.v2` message carries the headers `headbits-schema` (`<Avro full name>Batch`) and
`headbits-schema-fingerprint` (of the Arrow schema), with or without a schema registry: the
registry holds Avro schemas, which a `.v2` value is not. A value that is no Arrow stream, or one
whose columns do not fit, is undecodable as a whole; a row with a null where none is allowed is a
bad *row*, rejected alone (the rest of its batch goes on).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headbits.common.avro import FINGERPRINT_HEADER, SCHEMA_HEADER, DecodeError, load_schema

FORMATS = ("v1", "v2")
ARROW_STREAM_START = b"\xff\xff\xff\xff"
MAX_MESSAGE_BYTES = 900_000
"""Largest `.v2` value written: librdkafka refuses a message above its `message.max.bytes`
(1,000,000 by default, key and headers included) and brokers a batch above 1 MiB by default."""
"""An Arrow IPC stream begins with the continuation marker; no Avro value of ours can (magic
byte 0 with a registry; without one a record starts with a string length, never 0xff x4 ...
unless it is garbage, which the schema header then tells apart)."""

_PRIMITIVES = {
    "string": pa.string(), "bytes": pa.binary(), "int": pa.int32(), "long": pa.int64(),
    "float": pa.float32(), "double": pa.float64(), "boolean": pa.bool_(),
}


def _arrow_type(avro_type: object) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) of one Avro field type."""
    if isinstance(avro_type, str):
        return _PRIMITIVES[avro_type], False
    if isinstance(avro_type, list):  # a union: ["null", X] is a nullable X
        others = [member for member in avro_type if member != "null"]
        if len(others) != 1:
            raise ValueError(f"union {avro_type} has no Arrow form")
        return _arrow_type(others[0])[0], "null" in avro_type
    if isinstance(avro_type, dict) and avro_type.get("type") == "array":
        return pa.list_(_arrow_type(avro_type["items"])[0]), False
    if isinstance(avro_type, dict):
        return _arrow_type(avro_type["type"])
    raise ValueError(f"Avro type {avro_type!r} has no Arrow form")


@dataclass(frozen=True)
class BatchSchema:
    """The `.v2` form of one topic's records: the Arrow schema, defaults and headers."""

    name: str
    arrow: pa.Schema
    defaults: dict[str, object]
    headers: list[tuple[str, bytes]]

    @property
    def fingerprint(self) -> str:
        return self.headers[1][1].decode()


@functools.cache
def batch_schema(avro_name: str) -> BatchSchema:
    """The `.v2` schema derived from `schemas/<avro_name>.avsc` (see the module docstring)."""
    avro = load_schema(avro_name)
    arrow_fields, defaults = [], {}
    for field in avro["fields"]:
        arrow_type, nullable = _arrow_type(field["type"])
        arrow_fields.append(pa.field(field["name"], arrow_type, nullable=nullable))
        if "default" in field:
            defaults[field["name"]] = field["default"]
    arrow = pa.schema(arrow_fields)
    name = f"{avro['name']}Batch"
    fingerprint = hashlib.sha256(arrow.serialize().to_pybytes()).hexdigest()[:16]
    return BatchSchema(name, arrow, defaults,
                       [(SCHEMA_HEADER, name.encode()), (FINGERPRINT_HEADER, fingerprint.encode())])


def is_batch(value: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """Whether a message is a `.v2` batch (else it is read as a `.v1` Avro record)."""
    for key, found in headers or ():
        if key == SCHEMA_HEADER:
            return found.endswith(b"Batch")
    return bool(value) and value[:4] == ARROW_STREAM_START


def table_of(avro_name: str, columns: dict[str, object], rows: int) -> pa.Table:
    """A table of the topic's schema from columns (numpy arrays, lists or Arrow arrays); a field
    not given takes its Avro default in every row, so producers name only what they compute."""
    schema = batch_schema(avro_name)
    arrays = []
    for field in schema.arrow:
        if field.name in columns:
            arrays.append(pa.array(columns[field.name], field.type)
                          if not isinstance(columns[field.name], pa.Array | pa.ChunkedArray)
                          else columns[field.name])
        elif field.name in schema.defaults:
            arrays.append(pa.array([schema.defaults[field.name]] * rows, field.type))
        else:
            raise ValueError(f"{schema.name}: column {field.name!r} is missing and has no default")
    return pa.Table.from_arrays(arrays, schema=schema.arrow)


def records_table(avro_name: str, records: Sequence[dict]) -> pa.Table:
    """The table of decoded `.v1` records (dicts of the Avro schema)."""
    return pa.Table.from_pylist(list(records), schema=batch_schema(avro_name).arrow)


def encode_table(table: pa.Table) -> bytes:
    """One Arrow IPC stream of one record batch."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, table.num_rows))
    return sink.getvalue().to_pybytes()


@dataclass(frozen=True)
class DecodedBatch:
    """A `.v2` message's rows that fit the schema, and (row in the message, reason) of the rest.

    `rows[i]` is the message row of `table` row i."""

    table: pa.Table
    rows: np.ndarray
    rejected: list[tuple[int, str]]


def decode_table(avro_name: str, value: bytes | None) -> DecodedBatch:
    """Strictly decode a `.v2` value; DecodeError says why it is not one of ours."""
    schema = batch_schema(avro_name)
    if not value:
        raise DecodeError("empty value (tombstone)")
    try:
        found = pa.ipc.open_stream(value).read_all()
        # Offsets and UTF-8 checked in full: the packing reads the buffers through the offsets.
        found.validate(full=True)
        names = found.column_names
    except Exception as error:  # pyarrow raises several kinds of error on garbage
        raise DecodeError(f"bad Arrow batch: {type(error).__name__}: {error}") from error
    if len(set(names)) != len(names):
        raise DecodeError(f"{schema.name}: a column name appears twice")
    arrays, problems = [], np.zeros(found.num_rows, dtype=bool)
    reasons: dict[int, str] = {}
    for field in schema.arrow:
        if field.name not in names:
            if field.name not in schema.defaults:
                raise DecodeError(f"{schema.name}: column {field.name!r} is missing")
            arrays.append(pa.array([schema.defaults[field.name]] * found.num_rows, field.type))
            continue
        column = found.column(field.name)
        if column.type != field.type:
            raise DecodeError(f"{schema.name}: column {field.name!r} is {column.type}, "
                              f"expected {field.type}")
        if not field.nullable and column.null_count:
            nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False))
            for row in np.flatnonzero(nulls & ~problems).tolist():
                reasons[row] = f"field {field.name!r} is null"
            problems |= nulls
        arrays.append(column)
    table = pa.Table.from_arrays(arrays, schema=schema.arrow).combine_chunks()
    rows = np.arange(found.num_rows)
    if problems.any():
        rows = np.flatnonzero(~problems)
        table = table.filter(pa.array(~problems))
    return DecodedBatch(table, rows, sorted(reasons.items()))


def row_value(table: pa.Table, row: int) -> bytes:
    """One row as a `.v2` value of its own: what a dead letter of a bad row carries."""
    return encode_table(table.slice(row, 1))


def split_by_key(keys: pa.Array | pa.ChunkedArray, max_rows: int
                 ) -> Iterator[tuple[str, np.ndarray]]:
    """(key, row indices) per output message: each key's rows in their order, at most
    `max_rows` a message, so one message is one sensor's batch of bounded size."""
    encoded = pc.dictionary_encode(keys)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    names = encoded.dictionary.to_pylist()
    if len(names) == 1:
        order = np.arange(len(codes))
        bounds = [0, len(codes)]
    else:
        order = np.argsort(codes, kind="stable")
        bounds = [0, *np.flatnonzero(np.diff(codes[order])) + 1, len(codes)]
    for start, stop in itertools.pairwise(bounds):
        rows = order[start:stop]
        name = names[codes[rows[0]]] if len(rows) else ""
        for chunk in range(0, len(rows), max_rows):
            yield name, rows[chunk : chunk + max_rows]


def binary_matrix(column: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray | None:
    """uint8 [rows, width] of a binary column whose every value is `width` bytes long, read
    straight from the Arrow buffers; None when some value has another length."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = np.frombuffer(column.buffers()[1], np.int32, len(column) + 1, column.offset * 4)
    if len(column) and not np.all(np.diff(offsets) == width):
        return None
    data = np.frombuffer(column.buffers()[2], np.uint8) if len(column) else np.empty(0, np.uint8)
    return data[offsets[0] : offsets[0] + width * len(column)].reshape(len(column), width)


@functools.cache
def _prefix_masks(width: int) -> np.ndarray:
    """uint8 [width + 1, width]: row k is 0xff in its first k bytes, 0 after."""
    positions = np.arange(width)
    return ((positions[None, :] < np.arange(width + 1)[:, None]) * 0xFF).astype(np.uint8)


_EIGHT_BYTE_MASKS = _prefix_masks(8).view(np.uint64)[:, 0].copy()


def _first_eight_bytes(data: pa.Buffer, starts: np.ndarray, kept: np.ndarray,
                       out: np.ndarray) -> None:
    """`out[k]` (uint64) = the 8 bytes of `data` from `starts[k]`, the bytes from `kept[k]` on 0.

    Two aligned word gathers and a funnel shift per value: gathering unaligned 8-byte windows
    (a strided view) takes numpy's generic path and measured twice as slow at 4096 rows. The
    upper word is shifted in two steps so that an aligned start (shift 64) gives 0, not itself.
    """
    words = np.zeros((data.size + 23) // 8, np.uint64)
    words.view(np.uint8)[:data.size] = np.frombuffer(data, np.uint8)
    word = starts >> 3
    shift = ((starts & 7) << 3).astype(np.uint64)
    low = np.take(words, word)
    high = np.take(words, word + 1)
    low >>= shift
    high <<= np.uint64(1)
    high <<= np.uint64(63) - shift
    low |= high
    np.bitwise_and(low, np.take(_EIGHT_BYTE_MASKS, kept), out=out)


def fixed_width(column: pa.Array | pa.ChunkedArray, width: int, out: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [rows, width] each value cut or NUL-padded to `width`, int64 lengths) of a binary
    column, from its buffers without Python per value.

    A strided view of the data buffer whose row k starts at byte k makes each value's first
    `width` bytes one row gather (a memcpy per value, not a gather per byte); bytes past a
    value's end (the next values' bytes) are cleared by AND with a prefix mask, 8 bytes a step.
    `out` (uint8 [rows, width], e.g. one direction's half of a row) receives the result.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    count = len(column)
    offsets = np.frombuffer(column.buffers()[1], np.int32, count + 1, column.offset * 4)
    lengths = np.diff(offsets).astype(np.int64)
    data = column.buffers()[2]
    if out is None:
        out = np.empty((count, width), np.uint8)
    if not count or data is None or data.size == 0:
        out[...] = 0
        return out, lengths
    kept = np.minimum(lengths, width)
    if width == 8 and sys.byteorder == "little":  # the funnel shift reads words little-endian
        _first_eight_bytes(data, offsets[:-1], kept, out.view(np.uint64)[:, 0])
        return out, lengths
    padded = np.concatenate([np.frombuffer(data, np.uint8), np.zeros(width, np.uint8)])
    windows = np.lib.stride_tricks.as_strided(
        padded, shape=(len(padded) - width + 1, width), strides=(1, 1), writeable=False)
    heads = windows[offsets[:-1]]
    masks = np.take(_prefix_masks(width), kept, axis=0)  # 10x faster than [kept] here
    if width % 8 == 0:
        np.bitwise_and(heads.view(np.uint64), masks.view(np.uint64), out=out.view(np.uint64))
    else:
        np.bitwise_and(heads, masks, out=out)
    return out, lengths


def pack_head_columns(orig: pa.Array | pa.ChunkedArray, resp: pa.Array | pa.ChunkedArray,
                      n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 [rows, 2n] orig then resp cut or padded to n, orig lengths, resp lengths) of two
    binary columns: the packed form of the features topic, straight from Arrow buffers."""
    head_bytes = np.empty((len(orig), 2 * n), np.uint8)
    _, orig_lengths = fixed_width(orig, n, head_bytes[:, :n])
    _, resp_lengths = fixed_width(resp, n, head_bytes[:, n:])
    return head_bytes, orig_lengths, resp_lengths


def binary_column(matrix: np.ndarray) -> pa.Array:
    """A binary Arrow column whose row i is `matrix[i]` (uint8 [rows, width]), zero-copy."""
    rows, width = matrix.shape
    offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), rows, [
        None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(matrix))])


def objects_table(avro_name: str, objects: Sequence[object]) -> pa.Table:
    """The table of objects (PayloadHeads) whose attributes are the schema's fields: one list
    per column, which costs a fraction of building one dict per object."""
    schema = batch_schema(avro_name)
    return pa.Table.from_arrays(
        [pa.array([getattr(item, field.name) for item in objects], field.type)
         for field in schema.arrow], schema=schema.arrow)


def rows_table(avro_name: str, rows: Sequence[tuple]) -> pa.Table:
    """The table of rows that hold the schema's fields in order (a HeadRow for payload_head):
    the rows transposed into columns, with no object per row."""
    schema = batch_schema(avro_name).arrow
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(schema)
    return pa.Table.from_arrays(
        [pa.array(column, field.type) for column, field in zip(columns, schema, strict=True)],
        schema=schema)


class RowDecoder:
    """Records (dicts) of a topic's messages in either format: for readers that want rows (the
    trainer's window, jobs that look back over a topic, the tools), not the services' hot path.

    `rows` raises DecodeError for a value that is neither a record nor a batch of ours; a `.v2`
    row with a null where none is allowed is left out and counted in `bad_rows`."""

    def __init__(self, avro_name: str, topic: str, registry: object = None) -> None:
        from headbits.common.avro import ValueCodec

        self.avro_name = avro_name
        self.records = ValueCodec(avro_name, topic, registry)
        self.bad_rows = 0

    def rows(self, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None
             ) -> list[dict]:
        if is_batch(value, headers):
            decoded = decode_table(self.avro_name, value)
            self.bad_rows += len(decoded.rejected)
            return decoded.table.to_pylist()
        return [self.records.decode(value, list(headers) if headers else None)]

    def column(self, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None,
               name: str) -> list:
        """One field of every row (as `rows`, without building a dict per row of a batch)."""
        if is_batch(value, headers):
            decoded = decode_table(self.avro_name, value)
            self.bad_rows += len(decoded.rejected)
            return decoded.table.column(name).to_pylist()
        return [self.records.decode(value, list(headers) if headers else None)[name]]


def encode_batches(table: pa.Table, sensors: pa.Array | pa.ChunkedArray, max_rows: int
                   ) -> Iterator[tuple[str, bytes, int]]:
    """(sensor, `.v2` value, rows) per message: each sensor's rows in order, at most `max_rows`
    rows a message (the message key is the sensor, so its traffic stays in one partition)."""
    for sensor, rows in split_by_key(sensors, max_rows):
        part = table if len(rows) == table.num_rows else table.take(pa.array(rows))
        for value, start, stop in encode_within(part):
            yield sensor, value, stop - start


def encode_within(table: pa.Table, max_bytes: int = MAX_MESSAGE_BYTES
                  ) -> Iterator[tuple[bytes, int, int]]:
    """(value, first row, end row) of consecutive slices of `table` that cover it in order, each
    encoded within `max_bytes`: a slice over the bound is halved until it fits, so wide rows
    (long heads) never make a message Kafka refuses. A single row is encoded whatever its size."""
    value = encode_table(table)
    if len(value) <= max_bytes or table.num_rows <= 1:
        yield value, 0, table.num_rows
        return
    half = table.num_rows // 2
    yield from encode_within(table.slice(0, half), max_bytes)
    for value, start, stop in encode_within(table.slice(half), max_bytes):
        yield value, half + start, half + stop
