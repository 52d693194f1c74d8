"""A bounded hand-off between a source's reader thread and the collector loop.

Items move in batches (one lock round-trip per received chunk, not per event) and the bound is
counted in items, so a stalled consumer stops the reader instead of growing memory.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")


class BoundedHandoff(Generic[ItemT]):
    """`put` blocks while `capacity` items are waiting; `take` waits for the first item."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: deque[ItemT] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, items: list[ItemT]) -> bool:
        """Append `items`, waiting for room before each part; False once closed (items dropped)."""
        start = 0
        with self._lock:
            while start < len(items):
                while len(self._items) >= self.capacity and not self._closed:
                    self._not_full.wait()
                if self._closed:
                    return False
                room = self.capacity - len(self._items)
                self._items.extend(items[start : start + room])
                start += room
                self._not_empty.notify()
        return True

    def take(self, max_items: int, timeout: float) -> list[ItemT]:
        """Up to `max_items` items, waiting at most `timeout` seconds for the first one."""
        with self._lock:
            if not self._items and not self._closed:
                self._not_empty.wait(timeout)
            count = min(max_items, len(self._items))
            taken = [self._items.popleft() for _ in range(count)]
            if taken:
                self._not_full.notify_all()
            return taken

    def close(self) -> None:
        """Wake every waiter; later puts are refused, items already queued can still be taken."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
