"""librdkafka's own log lines and client errors, routed to the service's JSON logger.

Without a `logger`, librdkafka prints plain-text lines to stderr, which breaks the JSON-lines log
contract exactly when it matters (a broker incident). Every client gets `logger` and `error_cb`
from here: its lines arrive on the `headbits.kafka.client` logger (formatted as JSON by
`headbits.common.logs`), and a service counts them by level with `count_client_events`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import KafkaError

from headbits.common.logs import fields

CLIENT_LOGGER = logging.getLogger("headbits.kafka.client")


def _on_error(error: KafkaError) -> None:
    """Client-level errors (all brokers down, authentication failed, ...); librdkafka retries
    the transient ones itself, so they are warnings unless fatal."""
    level = logging.ERROR if error.fatal() else logging.WARNING
    CLIENT_LOGGER.log(level, "kafka client error: %s", error.str(), extra=fields(
        code=error.name(), fatal=error.fatal(), retriable=error.retriable(),
    ))


def client_log_config() -> dict[str, object]:
    """The librdkafka properties that send its logs and errors to `CLIENT_LOGGER`."""
    return {"logger": CLIENT_LOGGER, "error_cb": _on_error}


class _CountingFilter(logging.Filter):
    def __init__(self, count: Callable[[str], None]) -> None:
        super().__init__()
        self._count = count

    def filter(self, record: logging.LogRecord) -> bool:
        self._count(record.levelname.lower())
        return True


def count_client_events(count: Callable[[str], None]) -> None:
    """Call `count(level)` for every line the Kafka clients log (a metric per level); it
    replaces an earlier counter, so a process has one, that of its current service runtime."""
    for old in [f for f in CLIENT_LOGGER.filters if isinstance(f, _CountingFilter)]:
        CLIENT_LOGGER.removeFilter(old)
    CLIENT_LOGGER.addFilter(_CountingFilter(count))
