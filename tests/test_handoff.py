"""BoundedHandoff: the bound between a source's reader thread and the collector loop."""

from __future__ import annotations

import threading
import time

import pytest

from headbits.collector.sources.handoff import BoundedHandoff


def test_put_blocks_at_capacity_until_items_are_taken() -> None:
    handoff: BoundedHandoff[int] = BoundedHandoff(capacity=4)
    done = threading.Event()

    def reader() -> None:
        handoff.put(list(range(10)))
        done.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.2)
    assert not done.is_set() and len(handoff) == 4, "the reader must wait at the bound"
    taken = []
    while len(taken) < 10:
        taken += handoff.take(3, 1.0)
        assert len(handoff) <= 4
    thread.join(2)
    assert done.is_set() and taken == list(range(10)), "every item, in order, none twice"


def test_take_returns_at_most_max_items_and_waits_at_most_the_timeout() -> None:
    handoff: BoundedHandoff[int] = BoundedHandoff(capacity=100)
    started = time.monotonic()
    assert handoff.take(5, 0.2) == []
    assert 0.15 <= time.monotonic() - started < 2.0
    handoff.put(list(range(8)))
    assert handoff.take(5, 0.2) == [0, 1, 2, 3, 4]
    assert handoff.take(5, 0.2) == [5, 6, 7]


def test_close_wakes_a_blocked_put_and_keeps_queued_items() -> None:
    handoff: BoundedHandoff[int] = BoundedHandoff(capacity=2)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(handoff.put([1, 2, 3])), daemon=True)
    thread.start()
    time.sleep(0.1)
    handoff.close()
    thread.join(2)
    assert result == [False], "a put refused by close says so"
    assert handoff.take(10, 0.1) == [1, 2], "what was queued before close can still be read"
    assert handoff.put([4]) is False
    started = time.monotonic()
    assert handoff.take(10, 5.0) == []
    assert time.monotonic() - started < 1.0, "a closed hand-off never waits"


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        BoundedHandoff(0)
