"""JSON-lines logging: one object per line on stderr, so log shippers need no parser.

Every line has `ts`, `level`, `service`, `logger` and `msg`; keyword fields passed as
`logger.info("...", extra={"fields": {...}})` are merged in.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonLinesFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(service: str, level: str = "info") -> logging.Logger:
    """Route the root logger to stderr as JSON lines and return the service's logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime
    return logging.getLogger(f"headbits.{service}")


def fields(**values: object) -> dict:
    """`extra=` argument that adds structured fields to one log line."""
    return {"fields": values}


class LogLines:
    """A writable text file whose every printed line becomes one log line (for code that
    reports to a file, such as the model repository's messages, inside a JSON-logging job)."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self._log.info(line.strip())
        return len(text)

    def flush(self) -> None:
        """Log lines are written as they come."""
