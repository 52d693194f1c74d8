"""librdkafka's own log lines and errors reach the JSON logger and the metric, never raw stderr."""

from __future__ import annotations

import contextlib
import logging
import time

import pytest

from headbits.common.kafka import DeliveryFailedError, KafkaConnection, Producer
from headbits.common.kafka.client_log import CLIENT_LOGGER, count_client_events
from headbits.common.logs import JsonLinesFormatter

UNREACHABLE = KafkaConnection(bootstrap_servers="127.0.0.1:1")  # nothing listens on port 1


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_client_errors_arrive_as_json_log_lines_and_are_counted(capfd) -> None:
    lines = Lines()
    CLIENT_LOGGER.addHandler(lines)
    counted: list[str] = []
    count_client_events(counted.append)
    producer = Producer(UNREACHABLE)
    try:
        producer.produce("headbits.test", b"x", "k")
        deadline = time.monotonic() + 20
        while not lines.records and time.monotonic() < deadline:
            producer.poll(0.2)  # log lines and errors are served by poll
    finally:
        CLIENT_LOGGER.removeHandler(lines)
        with contextlib.suppress(DeliveryFailedError):
            producer.flush(0.1)
    assert lines.records, "librdkafka said nothing about an unreachable broker"
    assert any("127.0.0.1:1" in r.getMessage() for r in lines.records)
    assert {r.levelno for r in lines.records} <= {logging.DEBUG, logging.INFO, logging.WARNING,
                                                 logging.ERROR, logging.CRITICAL}
    assert len(counted) >= len(lines.records), "every line is counted by level"
    formatted = JsonLinesFormatter("test").format(lines.records[0])
    assert formatted.startswith("{") and '"logger":"headbits.kafka.client"' in formatted
    raw = capfd.readouterr().err
    assert "%3|" not in raw and "%4|" not in raw and "%7|" not in raw, raw[:500]


def test_a_new_counter_replaces_the_old_one() -> None:
    first: list[str] = []
    second: list[str] = []
    count_client_events(first.append)
    count_client_events(second.append)
    CLIENT_LOGGER.warning("one line")
    assert (first, second) == ([], ["warning"])


def test_a_full_buffer_raises_after_its_bound_instead_of_retrying_for_ever() -> None:
    from headbits.common.kafka.producer import ProducerStalledError

    producer = Producer(UNREACHABLE, buffer_mb=1, buffer_wait_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(ProducerStalledError, match="producer buffer full for 1 s"):
        producer.produce_many("headbits.test", [bytes(1000)] * 5000, ["k"] * 5000)
    assert time.monotonic() - started < 10
    with contextlib.suppress(DeliveryFailedError):
        producer.flush(0.1)
