"""Avro schemas of the topics, and Avro container files of PayloadHeads.

The `.avsc` files in `schemas/` are the contract of each topic; this module is the only place
that loads them. Kafka values are written by `ValueCodec`: Confluent framing when a schema
registry is configured, schemaless Avro with a fingerprint header otherwise.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import struct
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import fastavro
import fastavro.schema

from headbits.common.records import PayloadHead


@functools.cache
def load_schema(name: str) -> dict:
    """Parsed schema `schemas/<name>.avsc` (e.g. "payload_head")."""
    text = resources.files("headbits.common").joinpath("schemas", f"{name}.avsc").read_text()
    return fastavro.parse_schema(json.loads(text))


def write_heads_file(path: Path, heads: Iterable[PayloadHead]) -> int:
    """Write heads as an Avro container file (the offline form of headbits.heads.v1)."""
    count = 0

    def records() -> Iterator[dict]:
        nonlocal count
        for head in heads:
            count += 1
            yield head.to_dict()

    with Path(path).open("wb") as out:
        fastavro.writer(out, load_schema("payload_head"), records(), codec="deflate")
    return count


def read_heads_file(path: Path) -> Iterator[PayloadHead]:
    with Path(path).open("rb") as source:
        for record in fastavro.reader(source, reader_schema=load_schema("payload_head")):
            yield PayloadHead.from_dict(record)


# Kafka values ---------------------------------------------------------------------------------

SCHEMA_HEADER = "headbits-schema"
FINGERPRINT_HEADER = "headbits-schema-fingerprint"
CONFLUENT_MAGIC = 0
_CONFLUENT_PREFIX = struct.Struct(">bI")


class DecodeError(ValueError):
    """A Kafka value that cannot be read with the topic's schema; the message says why."""


def schema_fingerprint(schema: dict) -> str:
    """CRC-64-AVRO fingerprint of the schema's parsing canonical form, as hex."""
    return fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(schema),
                                       "CRC-64-AVRO")


class SchemaRegistry:
    """The two calls of Confluent's Schema Registry REST API that framing needs, cached.

    `register(subject, schema)` returns the schema id (idempotent on the registry's side);
    `schema(id)` returns the parsed writer schema of an id. Works with any Confluent-compatible
    registry (Confluent, Karapace, Apicurio's ccompat API, Redpanda).
    """

    def __init__(self, url: str, auth: str | None = None, timeout: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout
        self._headers = {"Content-Type": "application/vnd.schemaregistry.v1+json"}
        if auth:
            token = base64.b64encode(auth.encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, dict] = {}

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._url + path, data=data, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:200]
            raise DecodeError(f"schema registry {path}: HTTP {error.code} {detail!r}") from error

    def register(self, subject: str, schema: dict) -> int:
        canonical = fastavro.schema.to_parsing_canonical_form(schema)
        if (subject, canonical) not in self._ids:
            answer = self._call(f"/subjects/{subject}/versions", {"schema": canonical})
            self._ids[(subject, canonical)] = int(answer["id"])
        return self._ids[(subject, canonical)]

    def schema(self, schema_id: int) -> dict:
        if schema_id not in self._schemas:
            answer = self._call(f"/schemas/ids/{schema_id}")
            self._schemas[schema_id] = fastavro.parse_schema(json.loads(answer["schema"]))
        return self._schemas[schema_id]


class ValueCodec:
    """Encodes and strictly decodes one topic's values with one of our schemas.

    Without a registry: schemaless Avro, and every message carries the schema's full name and
    fingerprint as headers; a message whose fingerprint differs is refused (wrong schema). With a
    registry: Confluent's wire format (magic byte 0, 4-byte schema id, Avro) registered under
    `<topic>-value`; a message written with another registered schema is resolved to ours by
    Avro's rules, or refused when it cannot be. Decoding also refuses trailing bytes, so a value
    that merely starts like a record is not taken for one.
    """

    def __init__(self, schema_name: str, topic: str, registry: SchemaRegistry | None = None):
        self.schema = load_schema(schema_name)
        self.fingerprint = schema_fingerprint(self.schema)
        self._registry = registry
        if registry is None:
            self.headers: list[tuple[str, bytes]] | None = [
                (SCHEMA_HEADER, self.schema["name"].encode()),
                (FINGERPRINT_HEADER, self.fingerprint.encode()),
            ]
            self._prefix = b""
        else:
            self.headers = None
            schema_id = registry.register(f"{topic}-value", self.schema)
            self._prefix = _CONFLUENT_PREFIX.pack(CONFLUENT_MAGIC, schema_id)

    def encode_many(self, records: Iterable[dict]) -> list[bytes]:
        out = io.BytesIO()
        write = fastavro.schemaless_writer
        values = []
        for record in records:
            out.seek(0)
            out.truncate()
            out.write(self._prefix)
            write(out, self.schema, record)
            values.append(out.getvalue())
        return values

    def encode(self, record: dict) -> bytes:
        return self.encode_many([record])[0]

    def decode(self, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> dict:
        """The record, or DecodeError saying why this value is not one of ours."""
        if value is None:
            raise DecodeError("empty value (tombstone)")
        if self._registry is None:
            if headers == self.headers:  # what our producers write: no header parsing needed
                return _read_exactly(value, 0, self.schema, None)
            found = dict(headers or ()).get(FINGERPRINT_HEADER)
            if found is None:
                raise DecodeError(f"no {FINGERPRINT_HEADER} header: not written by headbits")
            if found.decode(errors="replace") != self.fingerprint:
                raise DecodeError(
                    f"wrong schema: fingerprint {found.decode(errors='replace')}, "
                    f"expected {self.fingerprint} ({self.schema['name']})"
                )
            return _read_exactly(value, 0, self.schema, None)
        if len(value) < _CONFLUENT_PREFIX.size or value[0] != CONFLUENT_MAGIC:
            raise DecodeError("not Confluent-framed Avro (magic byte 0 + schema id)")
        _, schema_id = _CONFLUENT_PREFIX.unpack_from(value)
        writer = self._registry.schema(schema_id)
        reader = None if schema_fingerprint(writer) == self.fingerprint else self.schema
        return _read_exactly(value, _CONFLUENT_PREFIX.size, writer, reader)


def _read_exactly(value: bytes, start: int, writer: dict, reader: dict | None) -> dict:
    source = io.BytesIO(value)
    source.seek(start)
    try:
        record = fastavro.schemaless_reader(source, writer, reader)
    except Exception as error:  # fastavro raises many kinds of error on garbage
        raise DecodeError(f"bad Avro: {type(error).__name__}: {error}") from error
    if source.tell() != len(value):
        raise DecodeError(f"bad Avro: {len(value) - source.tell()} bytes after the record")
    return record
