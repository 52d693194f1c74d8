"""Avro schemas of the topics, and Avro container files of PayloadHeads.

The `.avsc` files in `schemas/` are the contract of each topic; this module is the only place
that loads them. Kafka wire formats (Confluent framing, fingerprint header) build on these.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import fastavro

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
