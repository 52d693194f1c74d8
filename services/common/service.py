"""The one loop every consuming service runs: decode batch -> pure transform -> encode batch.

A service is a `Stage`: the schema it reads, the topics and schemas it writes, and a transform
from decoded records to output records plus the indices it rejects. Everything else lives here,
once: consuming in batches, strict decoding, dead-lettering (undecodable values and rejected
records, each with its source topic/partition/offset and reason), producing, waiting for the
acknowledgements, and only then storing the batch's offsets (at-least-once). A transform that
cannot run now (one of the stage's `retryable_errors`) is retried with the same batch, nothing
stored. SIGTERM and SIGINT finish the current batch, flush the producer, commit the stored
offsets and exit 0.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from confluent_kafka import KafkaException

from headbits.common.avro import DecodeError, ValueCodec, open_registry
from headbits.common.kafka import (
    Consumer,
    DeadLetterTopic,
    KafkaConnection,
    Message,
    Producer,
    ProducerBuffer,
    TopicCreation,
    ensure_topics,
)
from headbits.common.kafka.client_log import count_client_events
from headbits.common.kafka.consumer import REFUSED
from headbits.common.logs import configure_logging, fields
from headbits.common.metrics import Health, ServiceMetrics, serve
from headbits.common.readiness import KafkaReadiness
from headbits.common.settings import setting

RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
JSON_VALUES = "json"
"""The `schema` of an output written as one JSON object per message (for SIEMs), not Avro."""


@dataclass(frozen=True)
class ServiceSettings(KafkaConnection, TopicCreation, ProducerBuffer, DeadLetterTopic):
    """What every streaming service has: the Kafka connection, topic creation, the producer's
    buffer, the dead-letter topic, and the loop's own settings; each service adds the topic
    classes of the topics it reads and writes."""

    group_id: str = setting("", "consumer group (default: headbits-<service>)")
    batch_size: int = setting(2000, "largest batch consumed, transformed and produced at once")
    batch_timeout_ms: int = setting(50, "longest wait for a batch to fill (adds to latency)")
    commit_interval_ms: int = setting(
        5000, "how often acknowledged offsets are committed: a crash replays up to this long of "
              "input (duplicates downstream), and operators' lag is this stale")
    metrics_host: str = setting("0.0.0.0", "address of the /metrics and /healthz server")
    metrics_port: int = setting(9100, "port of /metrics and /healthz (0: any free, -1: off)")
    log_level: str = setting("info", "debug, info, warning or error")


@dataclass(frozen=True)
class Output:
    """Records for one topic, each with its key (the connection uid)."""

    topic: str
    records: list[dict]
    keys: list[str]


@dataclass
class Transformed:
    """What a transform made of a batch: outputs, and (input index, reason) for each reject."""

    outputs: list[Output] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


class Stage(ABC):
    """A service's pure part. `transform` sees decoded records only, never Kafka."""

    name: str
    input_schema: str
    retryable_errors: tuple[type[Exception], ...] = ()
    """Errors after which the same batch is transformed again later (a backend is down)."""

    @abstractmethod
    def output_schemas(self) -> dict[str, str]:
        """Topic -> schema name of everything `transform` may emit."""

    @abstractmethod
    def transform(self, records: list[dict]) -> Transformed: ...

    def attach(self, runtime: Runtime) -> None:  # noqa: B027 - optional hook
        """Called once the service's runtime exists, for stages that export metrics of their own."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One input a service could not use, with where it came from and why."""

    reason: str
    value: bytes
    key: bytes | None = None
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    origin: str = ""

    @classmethod
    def of_message(cls, message: Message, reason: str) -> DeadLetter:
        key = message.key()
        return cls(reason, message.value() or b"", key if isinstance(key, bytes) else None,
                   message.topic(), message.partition(), message.offset())

    def record(self, service: str) -> dict:
        return {**dataclasses.asdict(self), "service": service, "ts": time.time()}

    def kafka_key(self) -> str:
        return f"{self.source_topic}/{self.source_partition}/{self.source_offset}"


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between batches."""

    def __init__(self) -> None:
        self.stopping = False

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._set)

    def _set(self, *_: object) -> None:
        self.stopping = True


class Runtime:
    """What every service process holds: logs, metrics + health server, producer, codecs."""

    def __init__(self, service: str, settings: ServiceSettings) -> None:
        self.service = service
        self.settings = settings
        self.log = configure_logging(service, settings.log_level)
        self.metrics = ServiceMetrics(service)
        self.health = Health()
        self.http = None
        if settings.metrics_port >= 0:
            self.http = serve(self.metrics, self.health, settings.metrics_host,
                              settings.metrics_port, KafkaReadiness(settings).check)
        self.registry = open_registry(settings)
        count_client_events(self.metrics.count_kafka_client_event)
        self.producer = Producer(settings, settings.producer_buffer_mb)
        self.stop = StopFlag()
        self._codecs: dict[str, ValueCodec] = {}

    @property
    def metrics_port(self) -> int | None:
        return self.http.server_address[1] if self.http else None

    def codec(self, schema: str, topic: str) -> ValueCodec:
        if topic not in self._codecs:
            self._codecs[topic] = ValueCodec(schema, topic, self.registry)
        return self._codecs[topic]

    def ensure_topics(self, topics: Sequence[str]) -> None:
        if self.settings.create_topics:
            created = ensure_topics(self.settings, topics)
            if created:
                self.log.info("created topics", extra=fields(topics=created))

    def produce(self, topic: str, schema: str, records: list[dict], keys: list[str]) -> None:
        if schema == JSON_VALUES:
            self.producer.produce_many(topic, [orjson.dumps(r) for r in records], keys)
            return
        codec = self.codec(schema, topic)
        self.producer.produce_many(topic, codec.encode_many(records), keys, codec.headers)

    def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        topic = self.settings.deadletter_topic
        codec = self.codec("deadletter", topic)
        records = [letter.record(self.service) for letter in letters]
        values = codec.encode_many(records)
        for letter, value in zip(letters, values, strict=True):
            self.producer.produce(topic, value, letter.kafka_key(), codec.headers)
            self.metrics.count_dead_letter(letter.reason)
        if letters:
            self.log.warning("dead-lettered", extra=fields(
                count=len(letters), first_reason=letters[0].reason,
                source=letters[0].kafka_key() if letters[0].source_topic else letters[0].origin,
            ))

    def close(self, flush: bool = True) -> None:
        """Stop health and metrics; first wait for every acknowledgement unless `flush` is off
        (the caller already reported a delivery failure)."""
        self.health.stop()
        if flush:
            self.producer.flush()
        if self.http is not None:
            self.http.shutdown()


def run_stage(stage: Stage, settings: ServiceSettings, input_topic: str) -> int:
    """Consume `input_topic` until SIGTERM; returns the exit code.

    One batch is in flight: batch k+1 is consumed, decoded and transformed while batch k's outputs
    travel to the brokers, and batch k's offsets are stored (after a flush that acknowledges its
    outputs) just before batch k+1's outputs are produced, so the CPU does not idle on the ack.
    """
    runtime = Runtime(stage.name, settings)
    runtime.stop.install()
    stage.attach(runtime)
    outputs = stage.output_schemas()
    runtime.ensure_topics([input_topic, *outputs, settings.deadletter_topic])
    decoder = runtime.codec(stage.input_schema, input_topic)
    consumer = Consumer(
        settings, settings.group_id or f"headbits-{stage.name}", [input_topic],
        on_lag=runtime.metrics.consumer_lag.set,
        **{"auto.commit.interval.ms": settings.commit_interval_ms},
    )
    runtime.log.info("started", extra=fields(
        input=input_topic, outputs=sorted(outputs), metrics_port=runtime.metrics_port,
        bootstrap_servers=settings.bootstrap_servers,
    ))
    in_flight: InFlight | None = None
    refused = False
    try:
        while not runtime.stop.stopping:
            runtime.health.beat()
            messages = consumer.consume(settings.batch_size, settings.batch_timeout_ms / 1000)
            batch = transform_batch(runtime, stage, decoder, messages) if messages else None
            if in_flight is not None:
                previous, in_flight = in_flight, None  # never acknowledged twice
                acknowledge(runtime, consumer, previous)
            if batch is not None:
                in_flight = produce_batch(runtime, outputs, batch)
    except KafkaException as error:
        if error.args[0].code() not in REFUSED:
            raise
        refused = True
        runtime.log.error("refused by Kafka", extra=fields(
            error=error.args[0].str(), code=error.args[0].name(),
            principal=f"User:{settings.sasl_username}" if settings.sasl_username else None,
            input=input_topic, group=settings.group_id or f"headbits-{stage.name}",
            hint="grant this principal the ACLs the README lists, or fix its credentials"))
    finally:
        runtime.close(flush=not refused)
        if not refused:
            if in_flight is not None:  # close() flushed, so its outputs are acknowledged
                acknowledge(runtime, consumer, in_flight)
            consumer.commit()
        consumer.close()
        runtime.log.info("stopped")
    return 1 if refused else 0


@dataclass
class Batch:
    """Consumed messages and what the stage made of them, ready to produce."""

    messages: list[Message]
    outputs: list[Output]
    letters: list[DeadLetter]
    started: float


@dataclass
class InFlight:
    """A batch whose outputs are produced but not yet known to be acknowledged."""

    batch: Batch
    produced: dict[str, int]


def transform_batch(
    runtime: Runtime, stage: Stage, decoder: ValueCodec, messages: list[Message]
) -> Batch:
    """Decode strictly (undecodable values become dead letters) and transform the rest."""
    started = time.monotonic()
    records, sources, letters = [], [], []
    for message in messages:
        try:
            records.append(decoder.decode(message.value(), message.headers()))
            sources.append(message)
        except DecodeError as error:
            letters.append(DeadLetter.of_message(message, str(error)))
    transformed = _transform_with_retry(runtime, stage, records)
    letters += [DeadLetter.of_message(sources[i], reason) for i, reason in transformed.rejected]
    return Batch(messages, transformed.outputs, letters, started)


def produce_batch(runtime: Runtime, schemas: dict[str, str], batch: Batch) -> InFlight:
    """Hand a batch's outputs and dead letters to the producer (not waiting for the acks)."""
    produced = {runtime.settings.deadletter_topic: len(batch.letters)}
    for output in batch.outputs:
        runtime.produce(output.topic, schemas[output.topic], output.records, output.keys)
        produced[output.topic] = produced.get(output.topic, 0) + len(output.records)
    runtime.dead_letter(batch.letters)
    return InFlight(batch, produced)


def acknowledge(runtime: Runtime, consumer: Consumer, in_flight: InFlight) -> None:
    """Wait until the batch's outputs are acknowledged, then store its input offsets."""
    runtime.producer.flush()
    messages = in_flight.batch.messages
    consumer.store(messages)
    done = time.monotonic()
    for topic, count in in_flight.produced.items():
        runtime.metrics.count_produced(topic, count)
    runtime.metrics.consumed.inc(len(messages))
    runtime.metrics.batch_size.observe(len(messages))
    runtime.metrics.batch_seconds.observe(done - in_flight.batch.started)
    oldest_ms = min(message.timestamp()[1] for message in messages)
    runtime.metrics.record_age_seconds.observe(max(0.0, time.time() - oldest_ms / 1000))


def _transform_with_retry(runtime: Runtime, stage: Stage, records: list[dict]) -> Transformed:
    attempt = 0
    while True:
        try:
            return stage.transform(records)
        except stage.retryable_errors as error:
            if runtime.stop.stopping:
                raise
            wait = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
            runtime.log.warning("backend unavailable, retrying the batch",
                                extra=fields(error=str(error), retry_in=wait))
            attempt += 1
            runtime.health.beat()
            time.sleep(wait)
