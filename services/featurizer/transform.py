"""PayloadHead records -> feature records: the featurizer's pure part (no Kafka here).

A feature record carries the packed heads at N = 64 (the scorer cuts them to its model's N), the
bytes present per direction (the validity mask in packed form) and what the connection is
expected to be (Zeek's confirmed service, else the port). Records that break the PayloadHead
contract (missing or mistyped fields, oversize heads) are rejected with the reason, never packed.
"""

from __future__ import annotations

import functools

from headbits.common.protocols import Expectation, expected_protocol
from headbits.common.records import MAX_HEAD_BYTES, InvalidRecord, PayloadHead
from headbits.featurizer.bits import pack_heads

FEATURE_N = MAX_HEAD_BYTES
"""Bytes per direction on the features topic: the widest N, so every model can read it."""


@functools.lru_cache(maxsize=65536)
def _expectation(services: tuple[str, ...], transport: str, resp_p: int) -> Expectation:
    return expected_protocol(services, transport, resp_p)


def parse_heads(records: list[dict]) -> tuple[list[PayloadHead], list[int], list[tuple[int, str]]]:
    """Valid heads, their indices in `records`, and (index, reason) for the invalid ones."""
    heads, kept, rejected = [], [], []
    for index, record in enumerate(records):
        try:
            heads.append(PayloadHead.from_dict(record).validate())
            kept.append(index)
        except InvalidRecord as error:
            rejected.append((index, f"invalid PayloadHead: {error}"))
    return heads, kept, rejected


def feature_records(heads: list[PayloadHead], n: int = FEATURE_N) -> list[dict]:
    """One Features record (schemas/features.avsc) per head, packed in one numpy pass."""
    if not heads:
        return []
    batch = pack_heads([h.orig_head for h in heads], [h.resp_head for h in heads], n)
    packed = batch.head_bytes.tobytes()
    width = 2 * n
    lengths = batch.head_lengths.tolist()
    records = []
    for row, (head, (orig_length, resp_length)) in enumerate(zip(heads, lengths, strict=True)):
        expectation = _expectation(head.services, head.transport, head.resp_p)
        records.append({
            "uid": head.uid, "ts": head.ts, "sensor": head.sensor,
            "orig_h": head.orig_h, "orig_p": head.orig_p,
            "resp_h": head.resp_h, "resp_p": head.resp_p, "transport": head.transport,
            "expected_protocol": expectation.protocol, "expected_source": expectation.source,
            "n": n, "head_bytes": packed[row * width : (row + 1) * width],
            "orig_length": orig_length, "resp_length": resp_length,
            "orig_gap": head.orig_gap, "resp_gap": head.resp_gap,
        })
    return records


def featurize(records: list[dict], n: int = FEATURE_N) -> tuple[list[dict], list[tuple[int, str]]]:
    """Feature records for the valid heads, and (input index, reason) for the rejected ones."""
    heads, _, rejected = parse_heads(records)
    return feature_records(heads, n), rejected

