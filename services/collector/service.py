"""Run the collector service: PayloadHeads from a source -> headbits.heads.v2.

Sources, one file each behind the Source seam: Zeek's WebSocket API (`--source websocket
--websocket-url ws://sensor:27759/v1/messages/json`, the default), Broker's native peering
(`--source broker --broker-address sensor:9999`), pcap replay (`--source replay --captures
a.pcap,b.pcapng`) and Avro heads files (`--source heads-file`), the last two as fast as possible
or at `--replay-rate` connections per second. One collector serves one sensor. Each batch read
is produced as one Arrow batch per sensor keyed by the sensor (`topic_format v1`: one Avro record
per head keyed by uid; idempotent, compressed), and deliveries are checked after every
batch: a failed one ends the collector with exit 1 and the reason;
events a source could not parse, and heads that break the contract, go to
headbits.deadletter.v1 with their origin and reason. Progress is logged every few seconds. A
finite source ends the service (exit 0) once every head is acknowledged; SIGTERM flushes first.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from headbits.collector.sources.base import EndOfSource, Source
from headbits.collector.zeek_event import DEFAULT_TOPIC
from headbits.common.kafka import DeliveryFailedError, HeadsTopic
from headbits.common.logs import fields
from headbits.common.service import DeadLetter, Runtime, ServiceSettings, TableOutput
from headbits.common.settings import (
    SettingsError,
    add_settings_arguments,
    setting,
    settings_from_args,
)

PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class CollectorSettings(ServiceSettings, HeadsTopic):
    source: str = setting("websocket", "where heads come from: websocket, broker, replay or "
                                       "heads-file")
    websocket_url: str | None = setting(
        None, "websocket: Zeek's WebSocket API, ws[s]://sensor:27759/v1/messages/json")
    broker_address: str | None = setting(None, "broker: host:port of Zeek's Broker listener")
    zeek_topic: str = setting(DEFAULT_TOPIC, "websocket/broker: topic the Zeek package uses")
    tls_ca_file: str | None = setting(None, "websocket/broker: CA certificate of the sensor")
    tls_cert_file: str | None = setting(None, "websocket/broker: client certificate")
    tls_key_file: str | None = setting(None, "websocket/broker: client private key")
    tls_verify: bool = setting(True, "websocket: verify the sensor's certificate (wss://)")
    broker_disable_tls: bool = setting(False, "broker: plain Broker (Broker::disable_ssl = T)")
    captures: tuple[Path, ...] = setting((), "replay: pcap/pcapng files, a,b,...")
    heads_files: tuple[Path, ...] = setting((), "heads-file: Avro heads files, a,b,...")
    replay_rate: float | None = setting(None, "replay: connections per second (unset: max)")
    sensor: str | None = setting(
        None, "sensor name stamped on heads (default: the capture's, or the sensor's host)")


def make_source(settings: CollectorSettings, registry: CollectorRegistry | None = None) -> Source:
    """The configured source; `registry` receives the live sources' link-event metric."""
    if settings.source == "websocket":
        return _websocket_source(settings, registry)
    if settings.source == "broker":
        return _broker_source(settings, registry)
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
    raise SettingsError(
        f"source {settings.source!r} is not known (websocket, broker, replay, heads-file)")


def _websocket_source(settings: CollectorSettings, registry: CollectorRegistry | None) -> Source:
    from urllib.parse import urlsplit

    from headbits.collector.sources.websocket import WebSocketSource, client_ssl_context

    if not settings.websocket_url:
        raise SettingsError(
            "--websocket-url (HEADBITS_WEBSOCKET_URL) is required with --source websocket")
    url = urlsplit(settings.websocket_url)
    context = None
    if url.scheme == "wss":
        context = client_ssl_context(settings.tls_ca_file, settings.tls_verify,
                                     settings.tls_cert_file, settings.tls_key_file)
    return WebSocketSource(settings.websocket_url, settings.sensor or url.hostname or "zeek",
                           topics=(settings.zeek_topic,), ssl_context=context, registry=registry)


def _broker_source(settings: CollectorSettings, registry: CollectorRegistry | None) -> Source:
    from headbits.collector.sources.broker import BrokerSource, BrokerTLS

    host, _, port = (settings.broker_address or "").rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError(
            "--broker-address (HEADBITS_BROKER_ADDRESS) host:port is required with --source broker")
    tls = BrokerTLS(disable=settings.broker_disable_tls, ca_file=settings.tls_ca_file or "",
                    certificate=settings.tls_cert_file or "", key=settings.tls_key_file or "")
    return BrokerSource(host, int(port), settings.sensor or host, topics=(settings.zeek_topic,),
                        tls=tls, registry=registry)


def collect(runtime: Runtime, source: Source) -> int:
    """Move heads from `source` to Kafka until it ends or SIGTERM; returns heads acknowledged.

    Deliveries are settled after every batch: a failed one raises DeliveryFailedError at once
    (the collector exits non-zero rather than run on while losing heads), and the produced-records
    metric counts what Kafka acknowledged, by topic, whenever nothing is in flight.
    """
    settings = runtime.settings
    topic = settings.heads_topic
    produced = rejected = acknowledged = 0
    started = last_report = time.monotonic()
    while not runtime.stop.stopping:
        runtime.health.beat()
        try:
            batch = source.read_batch(settings.batch_size, settings.batch_timeout_ms / 1000)
        except EndOfSource:
            break
        heads = batch.heads
        if heads.num_rows:
            runtime.produce_table(TableOutput(topic, heads, heads.column("sensor")),
                                  "payload_head")
        runtime.dead_letter([DeadLetter(item.reason, item.raw, origin=item.origin)
                             for item in batch.rejected])
        acknowledged += _count_acknowledged(runtime, runtime.producer.settle())
        items = heads.num_rows + len(batch.rejected)
        runtime.metrics.consumed.inc(items)
        if items:
            runtime.metrics.batch_size.observe(items)
        produced += heads.num_rows
        rejected += len(batch.rejected)
        now = time.monotonic()
        if now - last_report >= PROGRESS_SECONDS:
            last_report = now
            runtime.log.info("progress", extra=fields(
                heads=produced, acknowledged=acknowledged, rejected=rejected,
                rate=round(produced / (now - started), 1),
            ))
    acknowledged += _count_acknowledged(runtime, runtime.producer.flush())
    elapsed = time.monotonic() - started
    runtime.log.info("source done" if not runtime.stop.stopping else "stopped", extra=fields(
        heads=produced, acknowledged=acknowledged, rejected=rejected,
        seconds=round(elapsed, 3), rate=round(produced / max(elapsed, 1e-9), 1),
    ))
    return acknowledged


def _count_acknowledged(runtime: Runtime, settled: dict[str, int] | None) -> int:
    """Add settled acknowledgements to the metric; returns the heads topic's share."""
    for name, count in (settled or {}).items():
        runtime.metrics.count_produced(name, count)
    return (settled or {}).get(runtime.settings.heads_topic, 0)


def configure(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, CollectorSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(CollectorSettings, args)
    runtime = Runtime("collector", settings)
    try:
        source = make_source(settings, runtime.metrics.registry)
    except SettingsError:
        runtime.close()
        raise
    runtime.stop.install()
    runtime.ensure_topics([settings.heads_topic, settings.deadletter_topic])
    runtime.log.info("started", extra=fields(
        source=settings.source, output=settings.heads_topic, metrics_port=runtime.metrics_port,
        bootstrap_servers=settings.bootstrap_servers, topic_format=settings.topic_format,
    ))
    failed = True
    try:
        collect(runtime, source)
        failed = False
    except DeliveryFailedError as error:
        runtime.log.error("Kafka did not acknowledge heads; exiting so that the loss is seen",
                          extra=fields(error=str(error)))
        return 1
    finally:
        source.close()
        runtime.close(flush=not failed)  # after a failure, what is still queued is lost anyway
    return 0
