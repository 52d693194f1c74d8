"""The only module that touches confluent-kafka: clients with their defaults chosen once.

Producers are idempotent, lz4-compressed and batched, and report only failed deliveries (a Python
callback per delivered message would cost more than the rest of the featurizer). Consumers never
auto-store offsets: the service loop stores a batch's offsets only after everything that batch
produced has been acknowledged, so delivery is at-least-once and the background auto-commit only
ever commits what was stored. Topic names, retention and the connection/security settings live in
`KafkaSettings`, which every service's settings class extends, so one name means one thing in the
YAML file, the `HEADBITS_*` environment and the Helm chart alike.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from headbits.common.settings import setting

Message = confluent_kafka.Message
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class KafkaSettings:
    """Connection, security and topic settings shared by every service."""

    bootstrap_servers: str = setting("127.0.0.1:9092", "Kafka bootstrap servers, host:port,...")
    security_protocol: str = setting(
        "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: str | None = setting(None, "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER")
    sasl_username: str | None = setting(None, "SASL user name")
    sasl_password: str | None = setting(None, "SASL password (prefer the env var to a file)")
    ssl_ca_location: str | None = setting(None, "CA certificate file that signed the brokers'")
    ssl_certificate_location: str | None = setting(None, "client certificate file (mutual TLS)")
    ssl_key_location: str | None = setting(None, "client private key file (mutual TLS)")
    schema_registry_url: str | None = setting(
        None, "Confluent-compatible schema registry; unset: schemaless Avro + fingerprint header"
    )
    schema_registry_auth: str | None = setting(None, "registry basic auth as user:password")
    heads_topic: str = setting("headbits.heads.v1", "topic of PayloadHeads")
    features_topic: str = setting("headbits.features.v1", "topic of feature records")
    alerts_topic: str = setting("headbits.alerts.v1", "topic of alerts")
    scores_topic: str = setting("headbits.scores.v1", "topic of every score (optional output)")
    deadletter_topic: str = setting("headbits.deadletter.v1", "topic of undecodable input")
    create_topics: bool = setting(True, "create missing topics at start (needs the ACL to)")
    topic_partitions: int = setting(-1, "partitions of created topics (-1: broker default)")
    topic_replication_factor: int = setting(
        -1, "replication of created topics (-1: broker default)"
    )
    heads_retention_days: float = setting(7.0, "retention of the heads topic")
    features_retention_days: float = setting(30.0, "retention of the features topic (training)")
    alerts_retention_days: float = setting(90.0, "retention of the alerts topic")
    scores_retention_days: float = setting(7.0, "retention of the scores topic")
    deadletter_retention_days: float = setting(14.0, "retention of the dead-letter topic")
    producer_buffer_mb: int = setting(
        32, "memory for messages Kafka has not acknowledged; when Kafka stalls, a service "
            "stops reading its input at this bound instead of growing")


def connection_config(settings: KafkaSettings) -> dict[str, str]:
    """librdkafka properties for reaching the cluster (shared by every client)."""
    config = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
    }
    optional = {
        "sasl.mechanism": settings.sasl_mechanism,
        "sasl.username": settings.sasl_username,
        "sasl.password": settings.sasl_password,
        "ssl.ca.location": settings.ssl_ca_location,
        "ssl.certificate.location": settings.ssl_certificate_location,
        "ssl.key.location": settings.ssl_key_location,
    }
    config.update({key: value for key, value in optional.items() if value})
    return config


def topic_retentions(settings: KafkaSettings) -> dict[str, float]:
    """Topic name -> retention in days, as the settings say."""
    return {
        settings.heads_topic: settings.heads_retention_days,
        settings.features_topic: settings.features_retention_days,
        settings.alerts_topic: settings.alerts_retention_days,
        settings.scores_topic: settings.scores_retention_days,
        settings.deadletter_topic: settings.deadletter_retention_days,
    }


class DeliveryFailedError(RuntimeError):
    """Kafka refused or lost a produced message: the batch's input offsets must not be stored."""


class Producer:
    """An idempotent, compressed, batching producer that keys every message.

    `produce` never raises BufferError: when librdkafka's queue is full it polls (serving
    delivery reports, making room) and retries. `flush` waits until every message is acknowledged
    and raises DeliveryFailedError if any was not, which is the moment a consumer may store offsets.
    """

    def __init__(self, settings: KafkaSettings, **overrides: object) -> None:
        self._failures: list[str] = []
        config = {
            **connection_config(settings),
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 5,  # services produce a whole batch at once: waiting adds only latency
            "batch.num.messages": 10000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 200_000,
            "queue.buffering.max.kbytes": settings.producer_buffer_mb * 1024,
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            **overrides,
        }
        self._producer = confluent_kafka.Producer(config)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,
    ) -> None:
        """`timestamp_ms` 0: the record's timestamp is the produce time (CreateTime)."""
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, timestamp=timestamp_ms)
                return
            except BufferError:
                self._producer.poll(0.05)

    def produce_many(
        self,
        topic: str,
        values: Sequence[bytes],
        keys: Sequence[bytes | str],
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        produce = self._producer.produce
        for value, key in zip(values, keys, strict=True):
            try:
                produce(topic, value, key, headers=headers)
            except BufferError:
                self.produce(topic, value, key, headers)
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until all messages are acknowledged; raise DeliveryFailedError if any was not."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryFailedError(f"{remaining} messages unacknowledged after {timeout} s")
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryFailedError(f"{len(failures)} messages failed, first: {failures[0]}")


class Consumer:
    """A consumer-group member that consumes in batches and stores offsets only when told.

    Auto-commit runs in the background but commits only stored offsets; `store` is called by the
    service loop once a batch's outputs are acknowledged. Consumer lag per partition comes from
    librdkafka's statistics, reported to `on_lag(total_lag)` every `stats_interval_ms`.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        topics: Sequence[str],
        on_lag: Callable[[int], None] | None = None,
        stats_interval_ms: int = 5000,
        **overrides: object,
    ) -> None:
        self._on_lag = on_lag
        config = {
            **connection_config(settings),
            "group.id": group_id,
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.min.bytes": 1,
            "queued.max.messages.kbytes": 65_536,
            **overrides,
        }
        if on_lag is not None:
            config["statistics.interval.ms"] = stats_interval_ms
            config["stats_cb"] = self._on_stats
        self._consumer = confluent_kafka.Consumer(config)
        self._consumer.subscribe(list(topics))

    def _on_stats(self, text: str) -> None:
        stats = json.loads(text)
        lag = 0
        for topic in stats.get("topics", {}).values():
            for partition, numbers in topic.get("partitions", {}).items():
                if partition != "-1" and numbers.get("consumer_lag", -1) >= 0:
                    lag += numbers["consumer_lag"]
        if self._on_lag is not None:
            self._on_lag(lag)

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` records (errors that only inform are skipped, fatal ones raise)."""
        messages = self._consumer.consume(max_messages, timeout)
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.fatal():
                raise KafkaException(error)
        return records

    def store(self, messages: Iterable[Message]) -> None:
        """Mark these records done: the next auto-commit (or `commit`) commits past them.

        Partitions revoked since the records were consumed are skipped: their new owner
        resumes from the last commit, so those records are processed again (at-least-once).
        """
        # A partition's records arrive in offset order, so its last record has the highest.
        latest = {(m.topic(), m.partition()): m.offset() for m in messages}
        if not latest:
            return
        try:
            self._consumer.store_offsets(
                offsets=[TopicPartition(t, p, offset + 1) for (t, p), offset in latest.items()]
            )
        except KafkaException as error:
            if error.args[0].code() != KafkaError._STATE:  # none of them is assigned any more
                raise

    def commit(self) -> None:
        """Commit stored offsets now (on shutdown); nothing stored is not an error."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                raise

    def close(self) -> None:
        self._consumer.close()


def admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient(connection_config(settings))


def ensure_topics(
    settings: KafkaSettings, names: Iterable[str], timeout: float = 30.0
) -> list[str]:
    """Create those of `names` that do not exist yet, with their retention; return the created."""
    client = admin(settings)
    retention = topic_retentions(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    missing = [name for name in dict.fromkeys(names) if name not in existing]
    if not missing:
        return []
    new_topics = [
        NewTopic(
            name,
            num_partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
            config={"retention.ms": str(int(retention.get(name, 7.0) * DAY_MS))},
        )
        for name in missing
    ]
    created = []
    for name, future in client.create_topics(new_topics, request_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def topic_config(settings: KafkaSettings, name: str, key: str) -> str:
    """One config value of a topic as the broker reports it (e.g. "retention.ms")."""
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    client = admin(settings)  # kept referenced until the future resolves
    described = client.describe_configs([resource])[resource].result()
    return described[key].value


def end_offsets(settings: KafkaSettings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """Partition -> high watermark of `topic` (the count of records ever written, per partition)."""
    probe = confluent_kafka.Consumer({**connection_config(settings), "group.id": "headbits-probe"})
    try:
        metadata = probe.list_topics(topic, timeout=timeout).topics[topic]
        return {
            partition: probe.get_watermark_offsets(TopicPartition(topic, partition), timeout)[1]
            for partition in metadata.partitions
        }
    finally:
        probe.close()


def window_offsets(
    settings: KafkaSettings, topic: str, since_ms: int, timeout: float = 10.0
) -> dict[int, tuple[int, int]]:
    """Partition -> (first offset whose timestamp is >= `since_ms`, end offset now).

    A partition with no record that recent gets (end, end). Records appended after this call are
    beyond the end offsets, so reading these ranges ends even while producers keep writing.
    """
    probe = confluent_kafka.Consumer({**connection_config(settings), "group.id": "headbits-probe"})
    try:
        metadata = probe.list_topics(topic, timeout=timeout).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        ends = {
            partition: probe.get_watermark_offsets(TopicPartition(topic, partition), timeout)[1]
            for partition in metadata.partitions
        }
        found = probe.offsets_for_times(
            [TopicPartition(topic, partition, since_ms) for partition in ends], timeout
        )
    finally:
        probe.close()
    for tp in found:
        if tp.error is not None:
            raise KafkaException(tp.error)
    return {
        tp.partition: (tp.offset if 0 <= tp.offset <= ends[tp.partition] else ends[tp.partition],
                       ends[tp.partition])
        for tp in found
    }


def read_offset_ranges(
    settings: KafkaSettings,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    batch_size: int = 5000,
    idle_timeout: float = 60.0,
) -> Iterator[list[Message]]:
    """Batches of the records in `ranges` (partition -> [start, end)), then the iterator ends.

    Partitions are assigned, not subscribed, under a throw-away group id with commits off: the
    reader joins no consumer group and commits nothing, so no service's group is disturbed.
    Raises TimeoutError if no partition advances for `idle_timeout` seconds (broker gone).
    """
    consumer = confluent_kafka.Consumer({
        **connection_config(settings),
        "group.id": f"headbits-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # a start offset deleted by retention meanwhile
    })
    remaining = {p: end for p, (start, end) in ranges.items() if start < end}
    try:
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in remaining])
        last_progress = time.monotonic()
        while remaining:
            batch = []
            for message in consumer.consume(batch_size, 1.0):
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                elif message.offset() < remaining.get(message.partition(), -1):
                    batch.append(message)
            positions = consumer.position([TopicPartition(topic, p) for p in remaining])
            for position in positions:
                if position.offset >= remaining[position.partition]:
                    del remaining[position.partition]
            if batch or not remaining:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > idle_timeout:
                raise TimeoutError(
                    f"{topic}: no record arrived for {idle_timeout:g} s with partitions "
                    f"{sorted(remaining)} unfinished (is the broker reachable?)"
                )
            if batch:
                yield batch
    finally:
        consumer.close()


def wait_for_cluster(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    """True once a broker at `bootstrap_servers` answers a metadata request within `timeout`."""
    client = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            metadata = client.list_topics(timeout=max(0.2, deadline - time.monotonic()))
        except KafkaException:
            continue
        if metadata.brokers:
            return True
    return False
