"""Avro schemas of the topics, and Avro container files of PayloadHeads.

The `.avsc` files in `schemas/` are the contract of each topic; this module is the only place
that loads them. Kafka values are written by `ValueCodec`: Confluent framing when a schema
registry is configured, schemaless Avro with a fingerprint header otherwise.

With a registry, confluent-kafka's `SchemaRegistryClient` does the talking (auth, caching,
retries); its `AvroSerializer`/`AvroDeserializer` are not used, because they work one message
per Python call with a serialization context each, accept trailing bytes after a record, and raise
errors without the reason a dead letter needs. The Confluent wire format itself (magic byte 0, a
4-byte schema id, the Avro body) is written here in one batch loop.
"""

from __future__ import annotations

import functools
import io
import json
import struct
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import fastavro
import fastavro.schema
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError

from headbits.common.kafka.settings import KafkaConnection
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


def open_registry(settings: KafkaConnection) -> SchemaRegistryClient | None:
    """The configured schema registry's client, or None without one (schemaless mode).

    confluent-kafka's own client (auth, retries, caching of ids and schemas); it works with any
    Confluent-compatible registry (Confluent, Karapace, Apicurio's ccompat API, Redpanda).
    """
    if not settings.schema_registry_url:
        return None
    config = {"url": settings.schema_registry_url}
    if settings.schema_registry_auth:
        config["basic.auth.user.info"] = settings.schema_registry_auth.reveal()
    return SchemaRegistryClient(config)


def _is_unknown_schema(error: SchemaRegistryError) -> bool:
    """The registry answered that the id does not exist (not that it could not answer)."""
    return error.http_status_code == 404


class ValueCodec:
    """Encodes and strictly decodes one topic's values with one of our schemas.

    Without a registry: schemaless Avro, and every message carries the schema's full name and
    fingerprint as headers; a message whose fingerprint differs is refused (wrong schema). With a
    registry: Confluent's wire format (magic byte 0, 4-byte schema id, Avro) registered under
    `<topic>-value`; a message written with another registered schema is resolved to ours by
    Avro's rules, or refused when it cannot be. Decoding also refuses trailing bytes, so a value
    that merely starts like a record is not taken for one.
    """

    def __init__(
        self, schema_name: str, topic: str, registry: SchemaRegistryClient | None = None
    ) -> None:
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
            canonical = fastavro.schema.to_parsing_canonical_form(self.schema)
            schema_id = registry.register_schema(f"{topic}-value", Schema(canonical, "AVRO"))
            self._prefix = _CONFLUENT_PREFIX.pack(CONFLUENT_MAGIC, schema_id)
        self._writers: dict[int, dict] = {}

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
        writer = self._writer_schema(schema_id)
        reader = None if schema_fingerprint(writer) == self.fingerprint else self.schema
        return _read_exactly(value, _CONFLUENT_PREFIX.size, writer, reader)


    def _writer_schema(self, schema_id: int) -> dict:
        """The parsed schema a framed value was written with (parsed once per id).

        A registry that cannot answer (5xx, unreachable) raises SchemaRegistryError: an outage,
        not bad input. Every answer that does not give a usable Avro schema for the id (unknown
        id, another schema type, a body or schema that does not parse) is a DecodeError, so the
        value is dead-lettered with the reason instead of stopping the service.
        """
        if schema_id not in self._writers:
            try:
                registered = self._registry.get_schema(schema_id)
            except SchemaRegistryError as error:
                if _is_unknown_schema(error):
                    raise DecodeError(f"schema id {schema_id} is not in the registry") from error
                raise
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                # The client's parsing of a 200 answer that is not a registry response.
                raise DecodeError(f"schema id {schema_id}: the registry's answer is not a "
                                  f"schema ({type(error).__name__}: {error})") from error
            if registered.schema_type not in (None, "AVRO"):
                raise DecodeError(f"schema id {schema_id} is {registered.schema_type}, not Avro")
            try:
                parsed = fastavro.parse_schema(json.loads(registered.schema_str))
            except Exception as error:  # json and fastavro raise many kinds on a bad schema
                raise DecodeError(f"schema id {schema_id}: the registry's schema is not valid "
                                  f"Avro ({type(error).__name__}: {error})") from error
            self._writers[schema_id] = parsed
        return self._writers[schema_id]


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
