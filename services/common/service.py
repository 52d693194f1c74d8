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

import numpy as np
import orjson
import pyarrow as pa
from confluent_kafka import KafkaException

from headbits.common.avro import DecodeError, ValueCodec, open_registry
from headbits.common.columnar import (
    FORMATS,
    batch_schema,
    decode_table,
    encode_batches,
    encode_table,
    is_batch,
    records_table,
    row_value,
)
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
    batch_size: int = setting(
        2000, "largest batch consumed, transformed and produced at once (records; with .v2 "
              "input, rows: batch messages are read until about this many rows)")
    topic_format: str = setting(
        "v2", "format written to the heads, features and scores topics: v2 (one Arrow batch of "
              "one sensor's rows per message) or v1 (one Avro record per message); both are "
              "read whatever this says")
    batch_timeout_ms: int = setting(50, "longest wait for a batch to fill (adds to latency)")
    commit_interval_ms: int = setting(
        5000, "how often acknowledged offsets are committed: a crash replays up to this long of "
              "input (duplicates downstream), and operators' lag is this stale")
    metrics_host: str = setting("0.0.0.0", "address of the /metrics and /healthz server")
    metrics_port: int = setting(9100, "port of /metrics and /healthz (0: any free, -1: off)")
    log_level: str = setting("info", "debug, info, warning or error")


    def __post_init__(self) -> None:
        if self.topic_format not in FORMATS:
            from headbits.common.settings import SettingsError

            raise SettingsError(f"topic_format {self.topic_format!r} is not one of {FORMATS}")


@dataclass(frozen=True)
class Output:
    """Avro records for one topic (one message each), each with its key (the connection uid)."""

    topic: str
    records: list[dict]
    keys: list[str]


@dataclass(frozen=True)
class TableOutput:
    """Rows for a batched topic (heads, features, scores) with the sensor of each row: written
    as one message per sensor's batch (`.v2`) or, with topic_format v1, one Avro record per row
    keyed by its uid."""

    topic: str
    table: pa.Table
    sensors: pa.Array | pa.ChunkedArray

    @property
    def rows(self) -> int:
        return self.table.num_rows


@dataclass
class Transformed:
    """What a transform made of a batch: outputs, and (input index, reason) for each reject."""

    outputs: list[Output | TableOutput] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


class Stage(ABC):
    """A service's pure part. `transform` sees a decoded table only (the input schema's columns,
    see `headbits.common.columnar`), never Kafka; whatever format the messages had."""

    name: str
    input_schema: str
    retryable_errors: tuple[type[Exception], ...] = ()
    """Errors after which the same batch is transformed again later (a backend is down)."""

    @abstractmethod
    def output_schemas(self) -> dict[str, str]:
        """Topic -> schema name of everything `transform` may emit."""

    @abstractmethod
    def transform(self, table: pa.Table) -> Transformed:
        """Outputs of the rows of `table`; `rejected` holds (table row, reason)."""

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

    def produce_table(self, output: TableOutput, schema: str) -> None:
        """Rows of a batched topic in the configured `topic_format`."""
        if self.settings.topic_format == "v1":
            records = output.table.to_pylist()
            self.produce(output.topic, schema, records, [r["uid"] for r in records])
            return
        headers = batch_schema(schema).headers
        for sensor, value, rows in encode_batches(output.table, output.sensors,
                                                  self.settings.batch_size):
            self.producer.produce(output.topic, value, sensor, headers, records=rows)
        self.producer.poll(0)

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
        bootstrap_servers=settings.bootstrap_servers, topic_format=settings.topic_format,
    ))
    in_flight: InFlight | None = None
    refused = False
    # Start at one message: a .v2 backlog must not be swallowed as batch_size whole batches.
    rows_per_message = float(settings.batch_size)
    try:
        while not runtime.stop.stopping:
            runtime.health.beat()
            # About batch_size rows whatever the format: .v2 messages each hold many.
            wanted = max(1, int(settings.batch_size / rows_per_message))
            messages = consumer.consume(wanted, settings.batch_timeout_ms / 1000)
            batch = transform_batch(runtime, stage, decoder, messages) if messages else None
            if batch is not None:
                rows_per_message = max(1.0, batch.rows / len(messages))
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
class Inputs:
    """A consumed batch decoded into one table, and where each of its rows came from."""

    table: pa.Table
    message_of_row: np.ndarray
    row_in_message: np.ndarray
    letters: list[DeadLetter]

    def dead_letter(self, messages: list[Message], row: int, reason: str) -> DeadLetter:
        """A dead letter of one table row: a `.v1` record's own message, or a `.v2` batch's
        row alone (re-encoded as a one-row batch) with the row's place in its message."""
        message = messages[self.message_of_row[row]]
        if not is_batch(message.value(), message.headers()):
            return DeadLetter.of_message(message, reason)
        letter = DeadLetter.of_message(message, in_batch(reason, self.row_in_message[row]))
        return dataclasses.replace(letter, value=row_value(self.table, row))


def in_batch(reason: str, row: int) -> str:
    """A bad row's reason with its place in its batch (after the reason's class, which labels
    the dead-letter metric)."""
    return f"{reason} (row {row} of the batch)"


def decode_messages(schema: str, decoder: ValueCodec, messages: list[Message]) -> Inputs:
    """Strictly decode `.v1` records and `.v2` batches alike into one table in message order
    (undecodable values and rows become dead letters)."""
    tables: list[pa.Table] = []
    message_of_row: list[np.ndarray] = []
    row_in_message: list[np.ndarray] = []
    letters: list[DeadLetter] = []
    records: list[dict] = []
    record_messages: list[int] = []

    def flush_records() -> None:
        if records:
            tables.append(records_table(schema, records))
            message_of_row.append(np.array(record_messages, np.int64))
            row_in_message.append(np.zeros(len(records), np.int64))
            records.clear()
            record_messages.clear()

    for index, message in enumerate(messages):
        value, headers = message.value(), message.headers()
        try:
            if is_batch(value, headers):
                decoded = decode_table(schema, value)
                flush_records()
                tables.append(decoded.table)
                message_of_row.append(np.full(decoded.table.num_rows, index, np.int64))
                row_in_message.append(decoded.rows)
                for row, reason in decoded.rejected:
                    letter = DeadLetter.of_message(message, in_batch(reason, row))
                    letters.append(dataclasses.replace(
                        letter, value=encode_table(pa.ipc.open_stream(value).read_all()
                                                   .slice(row, 1))))
            else:
                records.append(decoder.decode(value, headers))
                record_messages.append(index)
        except DecodeError as error:
            letters.append(DeadLetter.of_message(message, str(error)))
    flush_records()
    if not tables:
        tables.append(records_table(schema, []))
    table = pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0]
    return Inputs(table, np.concatenate(message_of_row) if message_of_row else np.zeros(0, int),
                  np.concatenate(row_in_message) if row_in_message else np.zeros(0, int), letters)


@dataclass
class Batch:
    """Consumed messages and what the stage made of them, ready to produce."""

    messages: list[Message]
    outputs: list[Output | TableOutput]
    letters: list[DeadLetter]
    started: float
    rows: int


@dataclass
class InFlight:
    """A batch whose outputs are produced but not yet known to be acknowledged."""

    batch: Batch
    produced: dict[str, int]


def transform_batch(
    runtime: Runtime, stage: Stage, decoder: ValueCodec, messages: list[Message]
) -> Batch:
    """Decode strictly (undecodable values and rows become dead letters) and transform the rest."""
    started = time.monotonic()
    inputs = decode_messages(stage.input_schema, decoder, messages)
    transformed = _transform_with_retry(runtime, stage, inputs.table)
    letters = inputs.letters + [inputs.dead_letter(messages, row, reason)
                                for row, reason in transformed.rejected]
    rows = inputs.table.num_rows + len(inputs.letters)
    return Batch(messages, transformed.outputs, letters, started, rows)


def produce_batch(runtime: Runtime, schemas: dict[str, str], batch: Batch) -> InFlight:
    """Hand a batch's outputs and dead letters to the producer (not waiting for the acks)."""
    produced = {runtime.settings.deadletter_topic: len(batch.letters)}
    for output in batch.outputs:
        if isinstance(output, TableOutput):
            runtime.produce_table(output, schemas[output.topic])
            count = output.rows
        else:
            runtime.produce(output.topic, schemas[output.topic], output.records, output.keys)
            count = len(output.records)
        produced[output.topic] = produced.get(output.topic, 0) + count
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
    runtime.metrics.consumed.inc(in_flight.batch.rows)
    runtime.metrics.batch_size.observe(in_flight.batch.rows)
    runtime.metrics.batch_seconds.observe(done - in_flight.batch.started)
    oldest_ms = min(message.timestamp()[1] for message in messages)
    runtime.metrics.record_age_seconds.observe(max(0.0, time.time() - oldest_ms / 1000))


def _transform_with_retry(runtime: Runtime, stage: Stage, table: pa.Table) -> Transformed:
    attempt = 0
    while True:
        try:
            return stage.transform(table)
        except stage.retryable_errors as error:
            if runtime.stop.stopping:
                raise
            wait = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
            runtime.log.warning("backend unavailable, retrying the batch",
                                extra=fields(error=str(error), retry_in=wait))
            attempt += 1
            runtime.health.beat()
            time.sleep(wait)
