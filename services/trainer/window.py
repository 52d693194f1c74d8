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
# Memory a sampled feature record takes in this process (the decoded record, N=64, and its uid
# in the duplicate check), measured with tracemalloc and rounded up; bench/trainer.py checks it.
ROW_BYTES = 1536


class Reservoir:
    """A uniform sample of at most `capacity` items of a stream of unknown length (Vitter's
    algorithm R), fed batch by batch, so a window of any size fits in bounded memory."""

    def __init__(self, capacity: int, seed: int | np.random.Generator) -> None:
        if capacity < 1:
            raise ValueError(f"a reservoir holds at least one item, not {capacity}")
        self.capacity = capacity
        self.items: list = []
        self.seen = 0
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def add(self, items: Sequence) -> tuple[list, list]:
        """Offer `items`; returns (the offered items taken in, the items pushed out), in the
        order it happened (an item taken in may be pushed out again by a later one)."""
        room = max(0, self.capacity - len(self.items))
        taken = list(items[:room])
        self.items.extend(taken)
        rest = items[room:]
        self.seen += len(taken)
        evicted = []
        if rest:
            # Item k (1-based, over the stream) replaces slot j ~ U[0, k) when j < capacity.
            slots = self._rng.integers(0, self.seen + np.arange(1, len(rest) + 1))
            for index in np.flatnonzero(slots < self.capacity).tolist():
                evicted.append(self.items[slots[index]])
                self.items[slots[index]] = rest[index]
                taken.append(rest[index])
            self.seen += len(rest)
        return taken, evicted

    def shrink(self, capacity: int) -> list:
        """Keep a uniform `capacity`-subset (still a uniform sample of everything seen, so
        algorithm R continues from it unchanged); returns the items dropped."""
        if capacity < 1:
            raise ValueError(f"a reservoir holds at least one item, not {capacity}")
        dropped = []
        if len(self.items) > capacity:
            keep = np.zeros(len(self.items), dtype=bool)
            keep[self._rng.choice(len(self.items), capacity, replace=False)] = True
            dropped = [item for item, kept in zip(self.items, keep, strict=True) if not kept]
            self.items = [item for item, kept in zip(self.items, keep, strict=True) if kept]
        self.capacity = capacity
        return dropped


def water_level(demands: Sequence[int], budget: int) -> int:
    """The per-stratum cap L: strata below it keep every row, the larger share the rest.

    When the demands exceed the budget, L is the largest cap with sum(min(demand, L)) <= budget;
    while they fit, L leaves the spare room to any one stratum (the budget less all the others).
    As a window is read the demands only grow, so L only falls: a stratum that once filled its
    cap is never asked to grow back, which a sample that has already dropped rows could not do
    uniformly.
    """
    ordered = sorted(demands)
    if sum(ordered) <= budget:
        return max(1, budget - sum(ordered) + max(ordered, default=0))
    remaining, left = budget, len(ordered)
    for demand in ordered:
        share = remaining // left
        if demand > share:
            return max(1, share)
        remaining -= demand
        left -= 1
    raise AssertionError("unreachable: the demands exceed the budget")


class StratifiedReservoir:
    """Uniform samples per stratum (protocol and sensor) within one row budget, deduplicated
    by uid.

    A 30-day window is dominated by a few protocols and sensors; a uniform sample of it would
    teach the classifier little about the rest. Each stratum keeps a uniform sample of its own
    rows, capped by the water level of the budget over the strata seen so far, so small strata
    are kept whole and large ones share the rest. At-least-once delivery can repeat a record:
    a uid already kept is not kept twice (a repeat of a uid not kept gets the chance any row
    gets, a bias of the order of the duplicate rate).
    """

    def __init__(self, budget_rows: int, seed: int) -> None:
        if budget_rows < 1:
            raise ValueError(f"a sample holds at least one row, not {budget_rows}")
        self.budget_rows = budget_rows
        self.duplicates = 0
        self._rng = np.random.default_rng(seed)
        self._strata: dict[tuple[str, str], Reservoir] = {}
        self._uids: set[str] = set()

    def add(self, records: Sequence[dict]) -> None:
        """Add a batch of screened feature records (each with uid, sensor, expected_protocol)."""
        by_stratum: dict[tuple[str, str], list[dict]] = {}
        offered: set[str] = set()
        for record in records:
            uid = record["uid"]
            if uid in self._uids or uid in offered:
                self.duplicates += 1
                continue
            offered.add(uid)
            by_stratum.setdefault((record["expected_protocol"], record["sensor"]), []).append(
                record)
        for key, rows in by_stratum.items():
            if key not in self._strata:
                self._strata[key] = Reservoir(self.budget_rows, self._rng)
            taken, evicted = self._strata[key].add(rows)
            self._uids.update(record["uid"] for record in taken)
            self._uids.difference_update(record["uid"] for record in evicted)
        self._rebalance()

    def _rebalance(self) -> None:
        level = water_level([r.seen for r in self._strata.values()], self.budget_rows)
        for reservoir in self._strata.values():
            if reservoir.capacity > level:
                dropped = reservoir.shrink(level)
                self._uids.difference_update(record["uid"] for record in dropped)

    @property
    def items(self) -> list[dict]:
        return [item for reservoir in self._strata.values() for item in reservoir.items]

    @property
    def seen(self) -> int:
        return sum(reservoir.seen for reservoir in self._strata.values())

    def strata(self) -> dict[str, dict[str, int]]:
        """Per stratum ("protocol@sensor"): rows seen and rows kept."""
        return {f"{protocol}@{sensor}": {"seen": r.seen, "kept": len(r.items)}
                for (protocol, sensor), r in sorted(self._strata.items())}


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
    duplicates: int = 0  # parser-labelled records whose uid was already sampled
    strata: dict = field(default_factory=dict)  # "protocol@sensor" -> rows seen and kept
    feedback_benign: int = 0  # rows an analyst marked benign: taught with the analyst's label
    feedback_malicious: int = 0  # rows an analyst marked malicious: left out

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
            "duplicate_uids": self.duplicates,
            "strata": self.strata,
            "feedback_benign": self.feedback_benign,
            "feedback_malicious_left_out": self.feedback_malicious,
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
