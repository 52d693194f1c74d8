"""A retained window of feature records as training data: who may teach, sampling, splitting.

Only records whose expected protocol a parser confirmed (`expected_source` "zeek") carry a label.
A port-based expectation is exactly what an attacker fakes (SSH on 443 "is" TLS by its port), so
port-labelled records teach nothing: not the classifier (a wrong label) and not the autoencoder
(it would learn whatever hides behind a port as normal). They are counted and left out.

A row's group is its sensor and the hour of its connection time: rows of one sensor and hour are
near-duplicates, so the validation split (by group) is by time and sensor, never by row. The
held-out part is the most recent rows by connection time, as the next day's traffic will be.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from headbits.common.records import PayloadHead
from headbits.scorer.alert_rules import check_features
from headbits.trainer.dataset import LabelledHeads

PARSER_CONFIRMED = "zeek"
GROUP_SECONDS = 3600


class Reservoir:
    """A uniform sample of at most `capacity` items of a stream of unknown length (Vitter's
    algorithm R), fed batch by batch, so a window of any size fits in bounded memory."""

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"a reservoir holds at least one item, not {capacity}")
        self.capacity = capacity
        self.items: list = []
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def add(self, items: Sequence) -> None:
        room = self.capacity - len(self.items)
        self.items.extend(items[:room])
        rest = items[room:]
        self.seen += len(items) - len(rest)
        if not rest:
            return
        # Item k (1-based, over the whole stream) replaces slot j ~ U[0, k) when j < capacity.
        slots = self._rng.integers(0, self.seen + np.arange(1, len(rest) + 1))
        for index in np.flatnonzero(slots < self.capacity).tolist():
            self.items[slots[index]] = rest[index]
        self.seen += len(rest)


@dataclass
class WindowCounts:
    """What reading a window found, record by record (every record lands in one count)."""

    undecodable: int = 0
    unusable: int = 0
    port_labelled: int = 0
    parser_labelled: int = 0
    first_unusable: str = ""
    unusable_reasons: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)

    @property
    def read(self) -> int:
        return self.undecodable + self.unusable + self.port_labelled + self.parser_labelled

    def to_dict(self) -> dict:
        return {
            "records_read": self.read,
            "undecodable": self.undecodable,
            "unusable": self.unusable,
            "unusable_reasons": dict(self.unusable_reasons.most_common()),
            "port_labelled_left_out": self.port_labelled,
            "parser_labelled": self.parser_labelled,
            "parser_labels": dict(self.labels.most_common()),
        }


def screen(records: list[dict], n: int, counts: WindowCounts) -> list[dict]:
    """The records that may teach a model of N=`n`; the others are counted in `counts`."""
    usable = []
    for record in records:
        problem = check_features(record, n)
        if problem is not None:
            counts.unusable += 1
            counts.first_unusable = counts.first_unusable or f"uid {record['uid']}: {problem}"
            counts.unusable_reasons[problem.split(":", 1)[0]] += 1
        elif record["expected_source"] != PARSER_CONFIRMED:
            counts.port_labelled += 1
        else:
            counts.parser_labelled += 1
            counts.labels[record["expected_protocol"]] += 1
            usable.append(record)
    return usable


def head_of(record: dict) -> PayloadHead:
    """The PayloadHead a feature record was packed from, as far as the record carries it.

    `services` becomes the confirmed protocol and the bytes seen become the head lengths: the
    record keeps only the heads, which is all a model reads.
    """
    n = record["n"]
    orig = record["head_bytes"][: record["orig_length"]]
    resp = record["head_bytes"][n : n + record["resp_length"]]
    return PayloadHead(
        uid=record["uid"], ts=record["ts"], sensor=record["sensor"],
        orig_h=record["orig_h"], orig_p=record["orig_p"], resp_h=record["resp_h"],
        resp_p=record["resp_p"], transport=record["transport"],
        services=(record["expected_protocol"],), orig_head=orig, resp_head=resp,
        orig_bytes_seen=len(orig), resp_bytes_seen=len(resp),
        orig_gap=record["orig_gap"], resp_gap=record["resp_gap"],
    )


def group_of(sensor: str, ts: float) -> str:
    return f"{sensor}/{int(ts // GROUP_SECONDS)}"


def labelled_heads(records: list[dict]) -> LabelledHeads:
    """Screened (parser-labelled) feature records as training rows, grouped by sensor and hour."""
    data = LabelledHeads()
    for record in records:
        data.add(head_of(record), record["expected_protocol"], PARSER_CONFIRMED,
                 group_of(record["sensor"], record["ts"]))
    return data


def most_recent(times: np.ndarray, fraction: float) -> np.ndarray:
    """bool per row: the latest `fraction` of rows by time, and every row as late as the cut."""
    times = np.asarray(times, dtype=np.float64)
    if len(times) == 0 or fraction <= 0:
        return np.zeros(len(times), dtype=bool)
    count = min(len(times), int(np.ceil(fraction * len(times))))
    cut = np.sort(times)[len(times) - count]
    return times >= cut
