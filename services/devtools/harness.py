"""Run the streaming services as processes and read what they write: the demo and the tests.

Each service runs exactly as in production (`headbits <verb>`, settings from HEADBITS_*
variables) in its own process, logging JSON lines to a file; `read_topic` reads a topic from the
start with a throw-away consumer group that never commits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from headbits.common.columnar import RowDecoder
from headbits.common.kafka import Consumer, KafkaSettings, ensure_topics
from headbits.common.kafka.settings import TOPIC_KINDS


class Topics:
    """A fresh set of topic names (one pipeline run), as settings and as HEADBITS_* variables."""

    def __init__(self, bootstrap: str, partitions: int = 3, prefix: str | None = None) -> None:
        tag = prefix or f"t{uuid.uuid4().hex[:8]}"
        self.names = {kind: f"{tag}.{kind}" for kind in TOPIC_KINDS}
        self.env = {
            "HEADBITS_BOOTSTRAP_SERVERS": bootstrap,
            "HEADBITS_METRICS_PORT": "0",
            "HEADBITS_TOPIC_PARTITIONS": str(partitions),
            **{f"HEADBITS_{kind.upper()}_TOPIC": name for kind, name in self.names.items()},
        }
        self.settings = KafkaSettings(
            bootstrap_servers=bootstrap, topic_partitions=partitions,
            **{f"{kind}_topic": name for kind, name in self.names.items()},
        )
        ensure_topics(self.settings, self.names.values())

    def __getitem__(self, kind: str) -> str:
        return self.names[kind]


class ServiceProcess:
    """`python -m headbits.cli <verb> ARGS...` with its JSON-lines log in `log_dir`."""

    def __init__(self, verb: str, env: dict[str, str], log_dir: Path, *args: str) -> None:
        self.verb = verb
        self.log_path = Path(log_dir) / f"{verb}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "headbits.cli", verb, *args],
            env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]

    def log_lines(self) -> list[dict]:
        lines = []
        for text in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(text))
            except ValueError:
                continue
        return lines

    def wait_started(self, timeout: float = 60.0) -> dict:
        """The service's "started" log line; raises if it exits or times out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("msg") == "started":
                    return line
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.verb} exited early:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.verb} did not start in {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self._log.close()
        return code


def read_topic(
    settings: KafkaSettings, topic: str, schema: str, until: Callable[[list[dict]], bool],
    timeout: float = 90.0,
) -> list[dict]:
    """Decoded records of `topic` from the start (each row of a `.v2` batch a record), until
    `until(records)` or the timeout."""
    codec = RowDecoder(schema, topic)
    consumer = Consumer(settings, f"reader-{uuid.uuid4().hex}", [topic],
                        **{"enable.auto.commit": False})
    records: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(records):
            for message in consumer.consume(5000, 0.5):
                for record in codec.rows(message.value(), message.headers()):
                    record["_position"] = (message.partition(), message.offset())
                    records.append(record)
    finally:
        consumer.close()
    return records


def stop_all(processes: list[ServiceProcess]) -> None:
    """SIGTERM every process that is still running (they flush and commit), then wait."""
    for process in processes:
        if process.process.poll() is None:
            process.process.send_signal(signal.SIGTERM)
    for process in processes:
        process.stop()
