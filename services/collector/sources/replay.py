"""Captures as a collector source: the heads Zeek would have published for them.

Files are read one at a time, when the collector asks for more. A capture's read errors become
`Rejected` items (empty raw bytes, the error line as reason, the file as origin), so the
collector dead-letters them instead of losing them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from headbits.collector.pcap import read_capture
from headbits.collector.sources.base import EndOfSource, Rejected, Source, SourceItem
from headbits.common.records import MAX_HEAD_BYTES


class ReplaySource(Source):
    """Heads of `paths` in file order, then connection-start order.

    `rate` paces delivery in connections per second (None: as fast as the collector reads);
    `sensor` defaults to each capture's file stem.
    """

    def __init__(
        self,
        paths: Iterable[Path],
        n: int = MAX_HEAD_BYTES,
        rate: float | None = None,
        sensor: str | None = None,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate={rate} must be positive (connections per second) or None")
        self._paths = deque(Path(path) for path in paths)
        self._n = n
        self._rate = rate
        self._sensor = sensor
        self._pending: deque[SourceItem] = deque()
        self._delivered = 0
        self._started: float | None = None
        self._closed = False

    def read(self, max_items: int, timeout: float) -> list[SourceItem]:
        if self._closed:
            raise EndOfSource("replay source is closed")
        deadline = time.monotonic() + timeout
        items: list[SourceItem] = []
        while len(items) < max_items and self._fill():
            if self._rate is not None:
                due = self._due()
                now = time.monotonic()
                if due > deadline:
                    break
                if due > now:
                    time.sleep(due - now)
            items.append(self._pending.popleft())
            self._delivered += 1
        if not items and not self._pending and not self._paths:
            raise EndOfSource(f"replayed {self._delivered} items")
        return items

    def _fill(self) -> bool:
        """Read captures until one yields items; False when none are left."""
        while not self._pending and self._paths:
            self._pending.extend(self._load(self._paths.popleft()))
        return bool(self._pending)

    def _load(self, path: Path) -> list[SourceItem]:
        """One file's items; subclasses read other file formats."""
        capture = read_capture(path, n=self._n, sensor=self._sensor)
        return [*capture.heads, *(Rejected(b"", error, str(path)) for error in capture.errors)]

    def _due(self) -> float:
        if self._started is None:
            self._started = time.monotonic()
        return self._started + self._delivered / self._rate

    def close(self) -> None:
        self._closed = True
        self._pending.clear()
        self._paths.clear()
