"""The records the whole system passes around.

`PayloadHead` is the unit of work: one connection, the first bytes of each direction, as the Zeek
script publishes it and as the pcap replay reassembles it. Its Avro form lives in
`schemas/payload_head.avsc`; the field names here are the schema's field names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MAX_HEAD_BYTES = 64
"""Largest N any model may use; Zeek and the replay collect this many bytes per direction."""

TRANSPORTS = ("tcp", "udp")


class InvalidRecord(ValueError):
    """A record that breaks the contract; the message says which field and why."""


HeadRow = tuple[str, float, str, str, int, str, int, str, tuple[str, ...], bytes, bytes, int, int,
                bool, bool]
"""A valid PayloadHead's field values in field order, which is the `payload_head` batch schema's
column order: what a source that decodes straight into columns hands on instead of the object
(a tuple costs a tenth of a frozen dataclass to build). `PayloadHead(*row)` is the object."""


@dataclass(frozen=True, slots=True)
class PayloadHead:
    """One connection's first payload bytes per direction.

    A head holds the contiguous bytes from the start of its direction's stream, at most
    `MAX_HEAD_BYTES`. It stops early at a gap (bytes lost before N were seen) and the gap flag
    says so: bytes after a hole are never invented or shifted. `*_bytes_seen` counts payload
    bytes observed in that direction, which may exceed the head's length.
    """

    uid: str
    ts: float
    sensor: str
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    transport: str
    services: tuple[str, ...]
    orig_head: bytes
    resp_head: bytes
    orig_bytes_seen: int
    resp_bytes_seen: int
    orig_gap: bool
    resp_gap: bool

    def row(self) -> HeadRow:
        """The field values in field order (see HeadRow)."""
        return (self.uid, self.ts, self.sensor, self.orig_h, self.orig_p, self.resp_h,
                self.resp_p, self.transport, self.services, self.orig_head, self.resp_head,
                self.orig_bytes_seen, self.resp_bytes_seen, self.orig_gap, self.resp_gap)

    @property
    def midstream(self) -> bool:
        """The start of some direction's stream was not seen (a gap flag): its head is no
        protocol's opening, so opening-bytes models score it but must not judge or learn it."""
        return self.orig_gap or self.resp_gap

    def validate(self, max_head_bytes: int = MAX_HEAD_BYTES) -> PayloadHead:
        """Return self, or raise InvalidRecord naming the first field that breaks the contract."""
        if not self.uid:
            raise InvalidRecord("uid is empty")
        if self.transport not in TRANSPORTS:
            raise InvalidRecord(f"transport {self.transport!r} is not one of {TRANSPORTS}")
        for name in ("orig_p", "resp_p"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise InvalidRecord(f"{name}={port} is outside 0..65535")
        for direction in ("orig", "resp"):
            head = getattr(self, f"{direction}_head")
            seen = getattr(self, f"{direction}_bytes_seen")
            if len(head) > max_head_bytes:
                raise InvalidRecord(
                    f"{direction}_head has {len(head)} bytes, more than the limit {max_head_bytes}"
                )
            if seen < len(head):
                raise InvalidRecord(
                    f"{direction}_bytes_seen={seen} is less than the head's {len(head)} bytes"
                )
        return self

    def to_dict(self) -> dict:
        """Field dict in schema order (services as a list), as the Avro writer wants it."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record["services"] = list(self.services)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> PayloadHead:
        """Inverse of `to_dict`; raises InvalidRecord on a missing field or a wrong type."""
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in record:
                raise InvalidRecord(f"field {field.name!r} is missing")
            values[field.name] = record[field.name]
        values["services"] = tuple(values["services"] or ())
        for name, kinds in _FIELD_TYPES.items():
            value = values[name]
            if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
                expected = " or ".join(kind.__name__ for kind in kinds)
                raise InvalidRecord(
                    f"field {name!r} should be {expected}, got {type(value).__name__}"
                )
        return cls(**values)

    def with_services(self, services: tuple[str, ...]) -> PayloadHead:
        return dataclasses.replace(self, services=services)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "uid": (str,),
    "ts": (int, float),
    "sensor": (str,),
    "orig_h": (str,),
    "orig_p": (int,),
    "resp_h": (str,),
    "resp_p": (int,),
    "transport": (str,),
    "orig_head": (bytes,),
    "resp_head": (bytes,),
    "orig_bytes_seen": (int,),
    "resp_bytes_seen": (int,),
    "orig_gap": (bool,),
    "resp_gap": (bool,),
}
