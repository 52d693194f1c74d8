"""ReplaySource through the Source contract: heads in order, read errors as Rejected, pacing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from headbits.collector.sources.base import EndOfSource, Rejected
from headbits.collector.sources.replay import ReplaySource
from headbits.common.records import PayloadHead
from tests.source_helpers import capture
from tests.test_pcap import REQUEST, RESPONSE


def drain(source: ReplaySource, max_items: int = 2) -> list:
    items = []
    while True:
        try:
            items += source.read(max_items, timeout=5.0)
        except EndOfSource:
            return items


def test_heads_then_rejected_errors_then_end_of_source(tmp_path: Path):
    good = capture(tmp_path, "good.pcap", clients=3)
    cut = capture(tmp_path, "cut.pcap", clients=2)
    cut.write_bytes(cut.read_bytes()[:-5])
    source = ReplaySource([good, cut], n=16)
    items = drain(source)
    heads = [item for item in items if isinstance(item, PayloadHead)]
    rejected = [item for item in items if isinstance(item, Rejected)]
    assert [head.sensor for head in heads] == ["good"] * 3 + ["cut"] * 2
    assert [head.orig_p for head in heads[:3]] == [51000, 51001, 51002]
    assert all(head.orig_head == REQUEST[:16] for head in heads)
    (error,) = rejected
    assert error.raw == b"" and error.origin == str(cut)
    assert "truncated packet at byte offset" in error.reason
    with pytest.raises(EndOfSource):
        source.read(10, timeout=0.1)
    source.close()
    source.close()


def test_sensor_override_and_close(tmp_path: Path):
    source = ReplaySource([capture(tmp_path, "a.pcap", clients=2)], sensor="lab")
    first = source.read(1, timeout=1.0)
    assert len(first) == 1 and first[0].sensor == "lab"
    assert first[0].resp_head == RESPONSE
    source.close()
    with pytest.raises(EndOfSource):
        source.read(1, timeout=0.1)


def test_rate_paces_connections(tmp_path: Path):
    source = ReplaySource([capture(tmp_path, "paced.pcap", clients=5)], rate=50.0)
    started = time.monotonic()
    first = source.read(100, timeout=0.05)
    assert 1 <= len(first) < 5  # the timeout ends the read before all are due
    rest = drain(source, max_items=100)
    elapsed = time.monotonic() - started
    assert len(first) + len(rest) == 5
    assert elapsed >= 4 / 50.0 * 0.9  # five connections at 50/s take at least 80 ms


def test_rate_must_be_positive():
    with pytest.raises(ValueError, match="rate"):
        ReplaySource([], rate=0)
