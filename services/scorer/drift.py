"""Drift: does today's traffic still look like the traffic the stable version was calibrated on?

Every score carries a calibrated tail probability: the share of held-out normal connections
(never trained on) that scored at least as high. For traffic like the calibration traffic these
are uniform on [0, 1] (that is what calibration means), whatever the protocol. So the drift of
a slice of traffic (one predicted protocol, one sensor) is how far the histogram of its recent
tail probabilities is from flat, measured by the population stability index (PSI) against the
uniform distribution: about 0 without drift, 0.1 a moderate and 0.25 a large shift by the usual
reading. New protocols, a new application version or a changed alert rate all pile tail
probabilities up near 0 (or, for traffic simpler than before, near 1), which the PSI sees long
before an operator does. A second signal is the share of tail probabilities below the alerting
target: the live alert rate the calibration promised to hold.

State is bounded: per slice a ring of the last `window_rows` values; slices are the model's
classes and the sensors, both bounded by the deployment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BINS = 10


def uniform_psi(values: np.ndarray, bins: int = BINS) -> float:
    """Population stability index of `values` (in [0, 1]) against the uniform distribution.

    Each bin's share is smoothed by half a count, so an empty bin costs a finite amount and a
    small sample is not mistaken for a shift by a zero alone.
    """
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    counts = np.bincount(np.minimum((values * bins).astype(np.int64), bins - 1),
                         minlength=bins)
    observed = (counts + 0.5) / (len(values) + 0.5 * bins)
    expected = 1.0 / bins
    return float(np.sum((observed - expected) * np.log(observed / expected)))


class Ring:
    """The last `capacity` float values, in O(1) memory per slice."""

    def __init__(self, capacity: int) -> None:
        self._values = np.empty(capacity, dtype=np.float32)
        self._next = 0
        self.total = 0

    def extend(self, batch: np.ndarray) -> None:
        self.total += len(batch)
        values = np.asarray(batch, dtype=np.float32)[-len(self._values):]
        end = self._next + len(values)
        if end <= len(self._values):
            self._values[self._next:end] = values
        else:
            split = len(self._values) - self._next
            self._values[self._next:] = values[:split]
            self._values[: end - len(self._values)] = values[split:]
        self._next = end % len(self._values)

    def values(self) -> np.ndarray:
        return self._values[: min(self.total, len(self._values))]


@dataclass(frozen=True)
class SliceDrift:
    """One slice's drift over its window (a `headbits.drift.v1` record)."""

    kind: str  # "protocol" or "sensor"
    key: str
    rows: int
    psi: float
    low_tail_share: float  # share of tail probabilities below the alerting target
    crossed: bool  # psi above the threshold, with rows enough to say so


class DriftMonitor:
    """Sliding-window drift per predicted protocol and per sensor."""

    def __init__(self, window_rows: int = 5000, min_rows: int = 500, psi_threshold: float = 0.25,
                 target_rate: float = 0.01) -> None:
        if min_rows > window_rows:
            raise ValueError(f"min_rows {min_rows} exceeds window_rows {window_rows}")
        self.window_rows = window_rows
        self.min_rows = min_rows
        self.psi_threshold = psi_threshold
        self.target_rate = target_rate
        self._slices: dict[tuple[str, str], Ring] = {}

    def observe(self, protocols: Sequence[str] | np.ndarray, sensors: Sequence[str] | np.ndarray,
                tail_probabilities: np.ndarray) -> None:
        """Add one batch of scores (row-aligned: predicted protocol, sensor, tail probability)."""
        tail = np.asarray(tail_probabilities, dtype=np.float32)
        for kind, names in (("protocol", protocols), ("sensor", sensors)):
            keys, of_row = np.unique(np.asarray(names, dtype=object), return_inverse=True)
            # One stable sort groups the rows by key and keeps each key's rows in arrival
            # order, which the ring's "last values" depend on.
            grouped = tail[np.argsort(of_row, kind="stable")]
            counts = np.bincount(of_row, minlength=len(keys))
            ends = np.cumsum(counts)
            for key, start, end in zip(keys.tolist(), (ends - counts).tolist(), ends.tolist(),
                                       strict=True):
                ring = self._slices.get((kind, key))
                if ring is None:
                    ring = self._slices[(kind, key)] = Ring(self.window_rows)
                ring.extend(grouped[start:end])

    def window(self, kind: str, key: str) -> np.ndarray:
        """One slice's last `window_rows` tail probabilities, oldest first (empty if unseen)."""
        ring = self._slices.get((kind, key))
        return ring.values() if ring is not None else np.empty(0, dtype=np.float32)

    def report(self) -> list[SliceDrift]:
        """Every slice's drift now, slices with too few rows marked as not crossed."""
        drifts = []
        for (kind, key), ring in sorted(self._slices.items()):
            values = ring.values()
            psi = uniform_psi(values)
            drifts.append(SliceDrift(
                kind=kind, key=key, rows=len(values), psi=psi,
                low_tail_share=float(np.mean(values < self.target_rate)) if len(values) else 0.0,
                crossed=len(values) >= self.min_rows and psi > self.psi_threshold,
            ))
        return drifts
