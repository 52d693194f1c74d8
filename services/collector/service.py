"""Run the collector service: PayloadHeads from a source -> headbits.heads.v1.

The source here is the pcap replay (`--source replay --captures a.pcap,b.pcapng`), as fast as
possible or at `--replay-rate` connections per second; Zeek's WebSocket and Broker sources plug
into the same Source seam. Heads are produced keyed by uid (idempotent, compressed, batched);
events a source could not parse, and heads that break the contract, go to
headbits.deadletter.v1 with their origin and reason. Progress is logged every few seconds. A
finite source ends the service (exit 0) once every head is acknowledged; SIGTERM flushes first.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from headbits.collector.sources.base import EndOfSource, Rejected, Source
from headbits.common.logs import fields
from headbits.common.records import InvalidRecord, PayloadHead
from headbits.common.service import DeadLetter, Runtime, ServiceSettings
from headbits.common.settings import (
    SettingsError,
    add_settings_arguments,
    setting,
    settings_from_args,
)

PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class CollectorSettings(ServiceSettings):
    source: str = setting("replay", "where heads come from: replay or heads-file")
    captures: tuple[Path, ...] = setting((), "replay: pcap/pcapng files, a,b,...")
    heads_files: tuple[Path, ...] = setting((), "heads-file: Avro heads files, a,b,...")
    replay_rate: float | None = setting(None, "replay: connections per second (unset: max)")
    sensor: str | None = setting(None, "sensor name stamped on heads (default: the capture's)")


def make_source(settings: CollectorSettings) -> Source:
    if settings.source == "replay":
        if not settings.captures:
            raise SettingsError("--captures (HEADBITS_CAPTURES) is required with --source replay")
        from headbits.collector.sources.replay import ReplaySource

        return ReplaySource(list(settings.captures), n=64, rate=settings.replay_rate,
                            sensor=settings.sensor)
    if settings.source == "heads-file":
        if not settings.heads_files:
            raise SettingsError(
                "--heads-files (HEADBITS_HEADS_FILES) is required with --source heads-file")
        from headbits.collector.sources.headsfile import HeadsFileSource

        return HeadsFileSource(list(settings.heads_files), rate=settings.replay_rate)
    raise SettingsError(f"source {settings.source!r} is not known (replay, heads-file)")


def split_items(items: list) -> tuple[list[PayloadHead], list[DeadLetter]]:
    """Valid heads, and dead letters for rejected events and contract-breaking heads."""
    heads, letters = [], []
    for item in items:
        if isinstance(item, Rejected):
            letters.append(DeadLetter(item.reason, item.raw, origin=item.origin))
            continue
        try:
            heads.append(item.validate())
        except InvalidRecord as error:
            letters.append(DeadLetter(f"invalid PayloadHead: {error}", repr(item).encode(),
                                      origin=item.uid))
    return heads, letters


def collect(runtime: Runtime, source: Source) -> int:
    """Move heads from `source` to Kafka until it ends or SIGTERM; returns heads produced."""
    settings = runtime.settings
    topic = settings.heads_topic
    produced = rejected = 0
    started = last_report = time.monotonic()
    while not runtime.stop.stopping:
        runtime.health.beat()
        try:
            items = source.read(settings.batch_size, settings.batch_timeout_ms / 1000)
        except EndOfSource:
            break
        heads, letters = split_items(items)
        runtime.produce(topic, "payload_head", [h.to_dict() for h in heads], [h.uid for h in heads])
        runtime.dead_letter(letters)
        runtime.metrics.consumed.inc(len(items))
        runtime.metrics.count_produced(topic, len(heads))
        if items:
            runtime.metrics.batch_size.observe(len(items))
        produced += len(heads)
        rejected += len(letters)
        now = time.monotonic()
        if now - last_report >= PROGRESS_SECONDS:
            last_report = now
            runtime.log.info("progress", extra=fields(
                heads=produced, rejected=rejected, rate=round(produced / (now - started), 1),
            ))
    runtime.producer.flush()
    elapsed = time.monotonic() - started
    runtime.log.info("source done" if not runtime.stop.stopping else "stopped", extra=fields(
        heads=produced, rejected=rejected, seconds=round(elapsed, 3),
        rate=round(produced / max(elapsed, 1e-9), 1),
    ))
    return produced


def configure(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, CollectorSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(CollectorSettings, args)
    source = make_source(settings)
    runtime = Runtime("collector", settings)
    runtime.stop.install()
    runtime.ensure_topics([settings.heads_topic, settings.deadletter_topic])
    try:
        collect(runtime, source)
    finally:
        source.close()
        runtime.close()
    return 0
